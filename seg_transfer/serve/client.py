"""A minimal standard-library client for ``seg-transfer serve`` (the tests, the load benchmark, scripts)."""
from __future__ import annotations

import http.client
import json
import secrets
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlencode, urlsplit

Query = Sequence[tuple[str, Any]]


def request(url: str, method: str = "GET", body: bytes = b"", headers: Optional[Mapping[str, str]] = None,
            timeout: float = 120.0) -> tuple[int, bytes, dict[str, str]]:
    """One HTTP request on a fresh connection: ``(status, body, headers)``. A server that answers before reading
    a whole (oversized) body may close the connection under the upload: its answer is read all the same."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, path or "/", body=body, headers=dict(headers or {}))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the answer (a 413) is already on its way back
        response = conn.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def multipart(fields: Mapping[str, bytes], filename: str = "upload") -> tuple[bytes, str]:
    """``fields`` (name -> file bytes) as a multipart/form-data body and its content type."""
    boundary = secrets.token_hex(16)
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for name, data in fields.items())
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def predict(url: str, image: bytes, query: Query = (), form: bool = True, token: Optional[str] = None,
            timeout: float = 120.0) -> tuple[int, Any]:
    """``POST url/predict`` with ``image`` (a form's ``image`` field, or the raw body): ``(status, JSON or bytes)``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if form:
        body, headers["Content-Type"] = multipart({"image": image})
    else:
        body, headers["Content-Type"] = image, "application/octet-stream"
    status, data, got = request(f"{url.rstrip('/')}/predict?{urlencode(list(query))}", "POST", body, headers, timeout)
    return status, json.loads(data) if got.get("content-type", "").startswith("application/json") else data
