"""``seg-transfer serve``: a ``Predictor`` behind HTTP (``app``: routes, limits, the page; ``batching``: model
calls of concurrent requests gathered into one; ``responses``: results as JSON; ``metrics``: the counters).

Needs the ``serve`` extra (Starlette, uvicorn, python-multipart); ``app`` names it in one line when missing.
"""
