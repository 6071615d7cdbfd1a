"""The HTTP service around a ``Predictor``: Starlette routes, limits, the page, and uvicorn running it.

Starlette rather than FastAPI: the endpoints validate their few query options themselves (one-line
errors in the toolkit's words), so FastAPI's pydantic layer and OpenAPI schema would add a compiled
dependency and nothing used.
"""
from __future__ import annotations

import asyncio
import copy
import hmac
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from typing import Any, AsyncGenerator, AsyncIterator, Iterator, Optional, Union

from ..errors import ImageTooLargeError, SegTransferError
from ..io import decode_image
from ..predict import Predictor
from ..predict.export import requires
from .batching import BatchingRunner
from .metrics import Metrics
from .options import ServeOptions
from .responses import model_json, png_bytes, predict_options, result_image, result_json

requires("starlette", "serve")
requires("uvicorn", "serve")
requires("python_multipart", "serve")

from starlette.applications import Starlette  # noqa: E402 - after the one-line check of the extra
from starlette.datastructures import UploadFile  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.formparsers import MultiPartException, MultiPartParser  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

UPLOAD_FIELD = "image"  # the multipart form field that carries the image (a raw body needs none)
PAGE = "index.html"


class HTTPError(Exception):
    """A request refused with ``status`` and a one-line message (the JSON ``{"error": message}``)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Service:
    """One predictor behind the routes: its batching runner, the request threads, the queue bound, the counters."""

    def __init__(self, predictor: Predictor, options: ServeOptions):
        self.options = options
        self.predictor = copy.copy(predictor)  # the caller's keeps its own runner
        self.batcher = BatchingRunner(predictor.runner, options.max_batch, options.batch_wait_ms)
        self.predictor.runner = self.batcher
        # enough threads for the batcher to fill a batch while others decode and encode
        self.pool = ThreadPoolExecutor(max_workers=max(4, 2 * options.max_batch), thread_name_prefix="seg-transfer-request")
        self.metrics = Metrics()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.batcher.close()

    # ---------------------------------------------------------------------------------- routes
    async def page(self, request: Request) -> Response:
        return HTMLResponse((resources.files(__package__) / "static" / PAGE).read_text(encoding="utf-8"))

    async def sample(self, request: Request) -> Response:
        """The photo the page offers to try (matplotlib's bundled sample, as ``infer --sample``)."""
        import matplotlib.cbook

        return FileResponse(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), media_type="image/jpeg")

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "task": self.predictor.task})

    async def model(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse(model_json(self.predictor, {"serve": self.options.public()}))

    async def metrics_text(self, request: Request) -> Response:
        self.authorize(request)
        return PlainTextResponse(self.metrics.text(self.batcher.stats), media_type="text/plain; version=0.0.4")

    async def predict(self, request: Request) -> Response:
        self.authorize(request)
        options, classes, output = predict_options(list(request.query_params.multi_items()), self.predictor)
        if self.metrics.in_flight >= self.options.max_queue:
            raise HTTPError(503, f"busy: {self.options.max_queue} requests are queued (--max-queue); try again shortly")
        self.metrics.in_flight += 1
        work = None
        try:
            data = await self.upload(request)
            start = time.perf_counter()
            work = asyncio.get_running_loop().run_in_executor(self.pool, self.run, data, options, classes, output)
            # shielded: a request past its timeout is answered 504, and its model call still completes in
            # order (a torch call cannot be interrupted); it keeps its place in the queue bound until then
            answer = await asyncio.wait_for(asyncio.shield(work), self.options.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPError(504, f"the prediction took longer than {self.options.timeout_s:g} s (--timeout)") from None
        finally:
            if work is None or work.done():
                self.metrics.in_flight -= 1
            else:
                work.add_done_callback(self.release)
        if isinstance(answer, bytes):
            return Response(answer, media_type="image/png")
        answer["timing"]["total_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return JSONResponse(answer)

    def release(self, _: Any) -> None:
        self.metrics.in_flight -= 1

    def run(self, data: bytes, options: dict[str, Any], classes: list[str], output: str) -> Union[dict[str, Any], bytes]:
        """In a request thread: decode (header first: a bomb is refused unread), predict, and the JSON
        report, or the PNG that ``output`` asks for."""
        start = time.perf_counter()
        image = decode_image(data, "upload", self.options.max_pixels)
        result = self.predictor.predict(image, **options)
        if output != "json":
            return png_bytes(result_image(result, output))
        return {"task": self.predictor.task, "classes": self.predictor.classes, **result_json(result, classes),
                "timing": {"predict_ms": round((time.perf_counter() - start) * 1000, 2)}}

    async def upload(self, request: Request) -> bytes:
        """The image bytes: the form's ``image`` file, or the raw body; at most ``max_bytes`` read."""
        limit = self.options.max_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"request body of {declared} bytes is over the limit of {limit} (--max-bytes)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPError(413, f"request body over the limit of {limit} bytes (--max-bytes)")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            return await self.form_file(request, bytes(body))
        if not body:
            raise HTTPError(400, f"empty request: send an image as the body or as the '{UPLOAD_FIELD}' field of a form")
        return bytes(body)

    async def form_file(self, request: Request, body: bytes) -> bytes:
        async def stream() -> AsyncGenerator[bytes, None]:
            yield body

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=4, max_fields=16).parse()
        except MultiPartException as err:
            raise HTTPError(400, f"malformed multipart form: {err.message}") from None
        upload = form.get(UPLOAD_FIELD)
        if not isinstance(upload, UploadFile):
            fields = ", ".join(form.keys()) or "none"
            raise HTTPError(400, f"no '{UPLOAD_FIELD}' file field in the form (fields: {fields})")
        data = await upload.read()
        await form.close()
        return data

    def authorize(self, request: Request) -> None:
        if self.options.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.options.token}".encode()):
            raise HTTPError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")


def create_app(predictor: Predictor, options: Optional[ServeOptions] = None) -> Starlette:
    """The ASGI app serving ``predictor``; its batcher and request threads stop with the app's lifespan."""
    service = Service(predictor, options or ServeOptions())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.close()

    async def refused(request: Request, err: Exception) -> Response:
        if isinstance(err, HTTPError):
            return error(err.status, str(err))
        if isinstance(err, ImageTooLargeError):
            return error(413, str(err))
        if isinstance(err, SegTransferError):  # a bad upload, class or option value: the client's to fix
            return error(400, str(err))
        if isinstance(err, HTTPException):  # Starlette's own: 404, 405
            return error(err.status_code, str(err.detail))
        # Starlette re-raises it after this answer, and uvicorn logs the traceback on the server's side
        return error(500, f"internal error ({type(err).__name__}); the server log has the details")

    routes = [Route("/", service.page), Route("/sample.jpg", service.sample), Route("/health", service.health),
              Route("/model", service.model), Route("/metrics", service.metrics_text),
              Route("/predict", service.predict, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={Exception: refused, HTTPError: refused, SegTransferError: refused,
                                        HTTPException: refused})
    app.add_middleware(Counted, metrics=service.metrics, paths={r.path for r in routes})
    app.state.service = service
    return app


class Counted:
    """ASGI middleware: every response counted by path (unknown paths as ``other``) and status, with its time."""

    def __init__(self, app: Any, metrics: Metrics, paths: set[str]):
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope["path"] if scope["path"] in self.paths else "other"
            self.metrics.record(path, status, time.perf_counter() - start)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), bound here so the real port can be printed,
    and listening at once: a client that connects as soon as the address is printed waits in the backlog
    instead of being refused while uvicorn starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise SegTransferError(f"--host {host} --port {port}: cannot listen there ({err.strerror})") from None
    sock.listen(2048)  # uvicorn's own backlog
    return sock


def _server(predictor: Predictor, options: ServeOptions) -> Any:
    import uvicorn

    config = uvicorn.Config(create_app(predictor, options), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=int(options.timeout_s) + 5)
    return uvicorn.Server(config)


def serve(predictor: Predictor, options: Optional[ServeOptions] = None, host: str = "127.0.0.1", port: int = 8000,
          quiet: bool = False) -> None:
    """Run the server until SIGINT/SIGTERM; requests in flight are finished before it exits."""
    options = options or ServeOptions()
    sock = bind(host, port)
    server = _server(predictor, options)
    shown = f"[{host}]" if ":" in host else host
    if not quiet:
        print(f"seg-transfer: serving a {predictor.task} model ({predictor.backend}) on "
              f"http://{shown}:{sock.getsockname()[1]}/ (Ctrl+C stops)", file=sys.stderr, flush=True)
    server.run(sockets=[sock])


@contextmanager
def running(predictor: Predictor, options: Optional[ServeOptions] = None, host: str = "127.0.0.1") -> Iterator[str]:
    """The server on a free port in a background thread for the block's duration; yields its URL
    (tests, the load benchmark, notebooks). Leaving the block finishes the requests in flight."""
    sock = bind(host, 0)
    server = _server(predictor, options or ServeOptions())
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="seg-transfer-serve", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server thread stopped while starting (its error is printed above)")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
