"""The server over real HTTP (uvicorn on a loopback port): each task's answer is ``Predictor.predict``'s on
the same image, bad uploads are one-line 4xx JSON errors after which the server still answers, the
token, ``/model``, ``/metrics`` and the page."""
from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from .helpers import TASK_MODELS, noise_image, predictor
from conftest import shared_image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from seg_transfer.serve.app import running  # noqa: E402
from seg_transfer.serve.client import multipart, predict, request  # noqa: E402
from seg_transfer.serve.options import ServeOptions  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=sorted(TASK_MODELS))
def served(request, standin):
    """(task, predictor, url): a server per task, batching on."""
    p = predictor(standin, request.param)
    with running(p, ServeOptions(max_batch=4, batch_wait_ms=5)) as url:
        yield request.param, p, url


def test_endpoint_matches_predictor(served):
    task, p, url = served
    photo = shared_image("dog1.jpg")
    query = {"segmentation": [("class", "dog")], "detection": [("score_threshold", 0.0)],
             "classification": [("top_k", 3)]}[task]
    status, report = predict(url, photo.read_bytes(), query)
    assert status == 200, report
    assert report["task"] == task and report["classes"] == p.classes
    assert report["timing"]["total_ms"] >= report["timing"]["predict_ms"] > 0
    if task == "segmentation":
        expected = p.predict(photo, keep=["dog"])
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(report["mask_png"]))))
        assert np.array_equal(mask, expected.mask.numpy())
        assert report["fractions"] == expected.fractions()
        prob = np.asarray(Image.open(io.BytesIO(base64.b64decode(report["probabilities_png"]["dog"]))))
        assert np.array_equal(prob, np.asarray(expected.probability_image("dog")))
    elif task == "detection":
        expected = p.predict(photo, score_threshold=0.0)
        assert len(expected) > 0, "no boxes to compare"
        got = report["detections"]
        assert [d["label"] for d in got] == expected.label_names
        assert np.allclose([d["box"] for d in got], expected.boxes.numpy(), atol=0.01)
        assert np.allclose([d["score"] for d in got], expected.scores.numpy(), atol=1e-5)
    else:
        expected = p.predict(photo, top_k=3)
        assert [(t["label"], round(t["prob"], 5)) for t in report["top_k"]] == [(k, round(v, 5)) for k, v in expected.top]


def test_raw_body_and_image_outputs(served):
    """The same image as the raw body; ``output=overlay`` answers the drawing ``infer`` saves."""
    task, p, url = served
    photo = shared_image("dog2.jpg")
    status, report = predict(url, photo.read_bytes(), form=False)
    assert status == 200 and report["task"] == task
    status, body = predict(url, photo.read_bytes(), [("output", "overlay")])
    if task == "classification":
        assert status == 400 and "output=overlay applies to segmentation and detection models" in body["error"]
        return
    assert status == 200
    drawn = Image.open(io.BytesIO(body))
    expected = p.predict(photo)
    reference = expected.overlay() if task == "segmentation" else expected.boxes_image()
    assert np.array_equal(np.asarray(drawn), np.asarray(reference))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds a few bytes of data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def small_server(standin):
    """A classification server with a 1 MiB body limit."""
    p = predictor(standin, "classification")
    with running(p, ServeOptions(max_bytes=2**20)) as url:
        yield url


def battery() -> dict[str, tuple[str, bytes, dict, int, str]]:
    """name -> (query, body, headers, expected status, words of the error)."""
    jpeg = shared_image("dog1.jpg").read_bytes()
    body, kind = multipart({"file": jpeg})
    raw = {"Content-Type": "application/octet-stream"}
    empty, empty_kind = multipart({"image": b""})
    return {
        "empty": ("", b"", raw, 400, "empty request"),
        "empty form file": ("", empty, {"Content-Type": empty_kind}, 400, "empty file"),
        "truncated jpeg": ("", jpeg[: len(jpeg) // 2], raw, 400, "cannot decode image"),
        "text file": ("", b"hello, this is not an image\n" * 10, raw, 400, "not an image file"),
        "20000x20000 png header": ("", png_header(20000, 20000), raw, 413, "400000000 pixels"),  # Pillow's limit
        "8000x8000 png header": ("", png_header(8000, 8000), raw, 413, "8000x8000 pixels, more than the limit"),  # ours
        "oversized body": ("", b"\0" * (2**20 + 10), raw, 413, "over the limit"),
        "missing field": ("", body, {"Content-Type": kind}, 400, "no 'image' file field in the form (fields: file)"),
        "malformed form": ("", b"--x\r\ngarbage", {"Content-Type": "multipart/form-data; boundary=y"}, 400, "form"),
        "unknown query": ("?colour=red", jpeg, raw, 400, "unknown query parameter"),
        "unknown class": ("?class=unicorn", jpeg, raw, 400, "unknown class 'unicorn'"),
        "bad top_k": ("?top_k=zero", jpeg, raw, 400, "top_k: expected an integer"),
        "top_k out of range": ("?top_k=0", jpeg, raw, 400, "--top-k: expected a positive integer"),
    }


CASES = ["empty", "empty form file", "truncated jpeg", "text file", "20000x20000 png header", "8000x8000 png header",
         "oversized body",
         "missing field", "malformed form", "unknown query", "unknown class", "bad top_k", "top_k out of range"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_4xx_and_the_next_request_succeeds(small_server, case):
    query, body, headers, code, words = battery()[case]
    status, data, got = request(f"{small_server}/predict{query}", "POST", body, headers)
    assert status == code, data
    assert got["content-type"] == "application/json"
    message = json.loads(data)["error"]
    assert words in message and "\n" not in message and "Traceback" not in message
    status, report = predict(small_server, noise_image(0))
    assert status == 200 and report["top_k"]


@pytest.mark.parametrize("path,method,code", [("/nowhere", "GET", 404), ("/predict", "GET", 405)])
def test_unknown_routes_answer_json(small_server, path, method, code):
    status, data, got = request(small_server + path, method)
    assert status == code and "error" in json.loads(data)


def test_health_model_metrics_and_page(small_server):
    status, data, _ = request(small_server + "/health")
    assert status == 200 and json.loads(data) == {"status": "ok", "task": "classification"}
    status, data, _ = request(small_server + "/model")
    model = json.loads(data)
    assert model["task"] == "classification" and len(model["classes"]) == 1000 and model["backend"] == "torch"
    assert model["preprocess"]["crop_size"] == 224 and model["serve"]["max_bytes"] == 2**20
    assert model["serve"]["token_required"] is False and model["version"]
    status, data, _ = request(small_server + "/metrics")
    text = data.decode()
    assert status == 200 and '# TYPE seg_transfer_predict_seconds histogram' in text
    assert 'seg_transfer_requests_total{path="/health",status="200"} 1' in text
    assert 'seg_transfer_requests_total{path="/model",status="200"} 1' in text
    status, data, got = request(small_server + "/")
    assert status == 200 and got["content-type"].startswith("text/html") and b'fetch("predict"' in data
    assert b"http://" not in data and b"https://" not in data  # no external fetches


def test_bearer_token(standin):
    p = predictor(standin, "classification")
    with running(p, ServeOptions(token="s3cret")) as url:
        status, report = predict(url, noise_image(1))
        assert status == 401 and "bearer token" in report["error"]
        assert predict(url, noise_image(1), token="wrong")[0] == 401
        assert predict(url, noise_image(1), token="s3cret")[0] == 200
        assert request(url + "/metrics")[0] == 401 and request(url + "/model")[0] == 401
        assert request(url + "/health")[0] == 200  # for load balancers' probes


def test_serve_options_are_checked():
    with pytest.raises(ValueError, match="--max-batch: expected a positive number, got 0"):
        ServeOptions(max_batch=0)
    with pytest.raises(ValueError, match="--batch-wait-ms: expected a non-negative number"):
        ServeOptions(batch_wait_ms=-1)
