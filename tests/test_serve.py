"""`visionkit serve`: the HTTP server, run as users run it (a subprocess on a free loopback port)
with every package the slim inference image lacks (torch, Ray...) made unimportable.

These tests use a tiny hand-made ONNX classifier (it names the dominant colour), so that they
need no training; tests/test_serve_e2e.py compares a served exported model with `visionkit predict`.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from visionkit.runtime import Model

from conftest import run_cli
from servehelp import multipart, png, running_server, tiny_classifier

COLOURS = {"red": (220, 30, 20), "green": (10, 200, 40), "blue": (20, 30, 230)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("serve") / "tiny.onnx")


@pytest.fixture(scope="module")
def server(tiny):
    """Small limits, so that the 413s need small bodies; micro-batching on."""
    with running_server(tiny, "--max-body-mb", "0.25", "--max-megapixels", "0.01", "--max-images", "3",
                        "--max-request-megapixels", "0.025",
                        "--max-batch", "4", "--batch-wait-ms", "20", "--workers", "2", "--body-timeout", "1") as srv:
        yield srv


def test_health_and_metadata(server):
    status, body, headers = server.call("GET", "/health")
    assert status == 200 and body == {"status": "ok", "model": "tiny.onnx", "task": "classification"}
    assert headers["content-type"] == "application/json"
    status, meta, _ = server.call("GET", "/metadata")
    assert status == 200
    assert meta["metadata"]["classes"] == ["red", "green", "blue"] and meta["metadata"]["input_size"] == [32, 32]
    assert meta["server"]["limits"]["max_images"] == 3 and meta["server"]["max_batch"] == 4
    # Training-side paths stay private: no data section, no run directory.
    assert "data" not in meta["metadata"] and meta["metadata"]["source"] == {"epoch": 3}
    assert "/private" not in json.dumps(meta)


def test_raw_and_multipart_predictions_equal_the_runtime(server, tiny, tmp_path):
    images = {name: png(rgb) for name, rgb in COLOURS.items()}
    expected = Model.load(tiny).predict([images[n] for n in COLOURS], top_k=2)
    for (name, data), want in zip(images.items(), expected):
        status, body, _ = server.call("POST", "/predict?top_k=2", data, {"Content-Type": "image/png"})
        assert status == 200, body
        [got] = body["predictions"]
        assert got == {**want, "file": "image 0"} and got["class"] == name
    # Several files in one multipart request: one result each, in order, named after the file.
    body, ctype = multipart([("image", "r.png", images["red"], "image/png"),
                             ("image", "b.jpg", png(COLOURS["blue"], fmt="JPEG"), "image/jpeg"),
                             ("other", "g.png", images["green"], "application/octet-stream")])
    status, out, _ = server.call("POST", "/predict", body, {"Content-Type": ctype})
    assert status == 200, out
    assert [(p["file"], p["class"]) for p in out["predictions"]] == [("r.png", "red"), ("b.jpg", "blue"),
                                                                      ("g.png", "green")]
    assert len(out["predictions"][0]["top_k"]) == 3  # the default top_k: 5, at most the classes


def _bad_requests():
    big = png(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8))  # ~480 kB PNG
    one = png(COLOURS["red"])
    four, four_type = multipart([("image", f"{i}.png", one, "image/png") for i in range(4)])
    text_part, text_type = multipart([("image", "notes.txt", b"hello", "text/plain")])
    no_file, no_file_type = multipart([], {"top_k": "2"})
    # 3 x 9,000 px: each within --max-megapixels (10,000), together over --max-request-megapixels (25,000)
    over_budget, over_budget_type = multipart([("image", f"{i}.png", png(COLOURS["red"], (90, 100)), "image/png")
                                               for i in range(3)])
    huge_header = io.BytesIO()
    Image.new("RGB", (200, 100)).save(huge_header, format="PNG")  # 20,000 px > 10,000 allowed
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    return [
        ("body over --max-body-mb", "/predict", big, "image/png", 413, "request body"),
        ("image over --max-megapixels", "/predict", huge_header.getvalue(), "image/png", 413, "200x100"),
        ("too many files", "/predict", four, four_type, 413, "more than 3 images"),
        ("images together over --max-request-megapixels", "/predict", over_budget, over_budget_type, 413,
         "request of 3 image(s) (largest 100x90) decodes to 27,000 pixels; this server decodes at most 25,000"),
        ("JSON body", "/predict", b'{"image": "..."}', "application/json", 415, "application/json"),
        ("form-encoded body (curl --data-binary without -H)", "/predict", one,
         "application/x-www-form-urlencoded", 415, "not an image type"),
        ("image type the server does not read", "/predict", one, "image/svg+xml", 415, "image/svg+xml"),
        ("text file part", "/predict", text_part, text_type, 415, "notes.txt"),
        ("bytes that are no image", "/predict", b"\x89PNG\r\n\x1a\n but then garbage", "image/png", 400,
         "cannot decode image"),
        ("a GIF (not a training format)", "/predict", gif.getvalue(), "application/octet-stream", 400,
         "cannot decode image"),
        ("truncated PNG", "/predict", one[: len(one) // 2], "image/png", 400, "cannot decode image"),
        ("empty body", "/predict", b"", "image/png", 400, "empty request body"),
        ("multipart without a file", "/predict", no_file, no_file_type, 400, "without a file part"),
        ("broken multipart", "/predict", b"--x\r\nnonsense", "multipart/form-data; boundary=y", 400, "multipart"),
        ("unknown option", "/predict?topk=2", one, "image/png", 400, "unknown query parameter 'topk'"),
        ("another task's option", "/predict?score_thresh=0.5", one, "image/png", 400,
         "unknown query parameter 'score_thresh'; this classification model's /predict takes top_k"),
        ("top_k not a number", "/predict?top_k=two", one, "image/png", 400, "expected int"),
        ("top_k out of range", "/predict?top_k=9", one, "image/png", 400, "expected 1 to 3"),
    ]


@pytest.mark.parametrize("case", _bad_requests(), ids=lambda c: c[0])
def test_bad_requests_get_their_4xx_as_json(server, case):
    _, path, body, ctype, want, message = case
    status, answer, headers = server.call("POST", path, body, {"Content-Type": ctype})
    assert (status, answer["status"]) == (want, want), answer
    assert message in answer["error"] and "\n" not in answer["error"] and "Traceback" not in answer["error"]
    assert headers["content-type"] == "application/json"


def test_wrong_route_and_method_are_json(server):
    assert server.call("GET", "/nowhere")[:2] == (404, {"error": "GET /nowhere: Not Found", "status": 404})
    status, body, _ = server.call("GET", "/predict")
    assert status == 405 and body["status"] == 405


def test_concurrent_requests_share_one_session_and_batch(server):
    """48 requests from 12 threads: each gets its own image's answer; images were batched."""
    names = list(COLOURS) * 16
    rng = np.random.default_rng(5)
    payloads = []
    for name in names:  # varied sizes and noise: requests are not interchangeable
        h, w = rng.integers(8, 90, 2)
        base = np.array(COLOURS[name], dtype=np.int16)
        noise = rng.integers(-15, 15, (h, w, 3))
        payloads.append(png(np.clip(base + noise, 0, 255).astype(np.uint8)))
    before = server.call("GET", "/metadata")[1]["stats"]

    def call(data):
        return server.call("POST", "/predict", data, {"Content-Type": "image/png"})

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(call, payloads))
    assert all(status == 200 for status, _, _ in answers), [a for a in answers if a[0] != 200][:1]
    assert [body["predictions"][0]["class"] for _, body, _ in answers] == names
    stats = server.call("GET", "/metadata")[1]["stats"]
    images = stats["batched_images"] - before["batched_images"]
    batches = stats["batches"] - before["batches"]
    assert images == len(names) and batches < images, stats  # some runs held several images
    assert stats["pending"] == 0


def test_serve_without_batching_and_without_blocking(tiny):
    """The default settings (no micro-batching), in an ordinary environment."""
    with running_server(tiny, "--threads", "1", block=False) as srv:
        status, body, _ = srv.call("POST", "/predict", png(COLOURS["green"]), {"Content-Type": "image/jpeg"})
        assert status == 200 and body["predictions"][0]["class"] == "green"
        assert srv.call("GET", "/metadata")[1]["server"]["max_batch"] == 1


def test_serve_user_errors_are_one_line(tmp_path, tiny):
    missing = run_cli("serve", str(tmp_path / "nope.onnx"), "--port", "0")
    assert missing.returncode == 2 and "nope.onnx: no such model file" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    bad = run_cli("serve", str(bogus), "--port", "0")
    assert bad.returncode == 2 and "not a usable ONNX model" in bad.stderr
    limits = run_cli("serve", str(tiny), "--max-images", "0")
    assert limits.returncode == 2 and "max_images" in limits.stderr
    budget = run_cli("serve", str(tiny), "--max-megapixels", "50")  # over the default request budget
    assert budget.returncode == 2 and "--max-request-megapixels must be at least --max-megapixels" in budget.stderr
    assert len(budget.stderr.strip().splitlines()) == 1
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli("serve", str(tiny), "--port", str(port))
    assert busy.returncode == 2 and f"--port {port}: cannot listen there (the port is in use)" in busy.stderr
    out_of_range = run_cli("serve", str(tiny), "--port", "70000")
    assert out_of_range.returncode == 2 and "(a port is 0-65535)" in out_of_range.stderr, out_of_range.stderr


def test_body_limit_holds_without_content_length(server):
    """A chunked upload declares no size: the server counts while reading and stops at the limit."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(server.url)
    chunks = [b"\0" * 65536] * 6  # 384 KiB > 256 KiB
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("POST", "/predict", body=iter(chunks), headers={"Content-Type": "image/png"},
                     encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413 and "over 262,144 bytes" in json.loads(resp.read())["error"]
    finally:
        conn.close()
    assert server.call("GET", "/health")[0] == 200


def test_a_stalled_body_gets_408(server):
    """A client that declares a body and stops sending holds a slot for --body-timeout at most."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                     + png(COLOURS["red"])[:100])
        answer = b""
        while b"}" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["error"].startswith("request body not received")


def test_a_chunked_body_whose_last_chunk_crosses_the_limit_gets_413():
    """uvicorn often hands over a body's last data and its end in one message: nothing is left
    to drain, and the answer is still 413 (it was a 500 'Stream consumed')."""
    import asyncio

    from starlette.requests import Request

    from visionkit.serving.app import bounded_stream
    from visionkit.serving.limits import RequestError

    async def read(messages) -> int:
        async def receive():
            return messages.pop(0)

        request = Request({"type": "http", "method": "POST", "path": "/predict", "headers": []}, receive)
        return sum([len(chunk) async for chunk in bounded_stream(request, 1000)])

    with pytest.raises(RequestError) as err:
        asyncio.run(read([{"type": "http.request", "body": b"\0" * 1500, "more_body": False}]))
    assert err.value.status == 413
    with pytest.raises(RequestError) as err:
        asyncio.run(read([{"type": "http.request", "body": b"\0" * 600, "more_body": True},
                          {"type": "http.request", "body": b"\0" * 600, "more_body": False}]))
    assert err.value.status == 413
    assert asyncio.run(read([{"type": "http.request", "body": b"\0" * 999, "more_body": False}])) == 999


def _solid_png(width: int, height: int) -> bytes:
    """A 1-bit solid image: a few kB of PNG that decodes to width x height RGB pixels."""
    buf = io.BytesIO()
    Image.new("1", (width, height), 1).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_a_small_request_that_would_decode_to_gigabytes_gets_413_before_decoding(tiny):
    """16 images of 25 MP (each within --max-megapixels) in ~140 kB: 400 MP, 1.2 GB as RGB before the
    float copies. The default per-request budget refuses it from the headers; memory stays flat."""
    with running_server(tiny) as srv:  # the defaults, as `visionkit serve model.onnx` runs
        assert srv.call("POST", "/predict", png(COLOURS["blue"]), {"Content-Type": "image/png"})[0] == 200
        side = 5000
        one = _solid_png(side, side)
        body, ctype = multipart([("image", f"{i}.png", one, "image/png") for i in range(16)])
        assert len(body) < 200_000  # under the 16 MiB body limit many times over
        rgb_bytes = 16 * side * side * 3
        before = srv.memory_kib()
        status, answer, _ = srv.call("POST", "/predict", body, {"Content-Type": ctype}, timeout=120)
        grew = (srv.memory_kib() - before) * 1024
        # The current decoded data alone would be 1.2 GB; a header check costs a few MB at most.
        assert (status, grew < rgb_bytes / 20) == (413, True), (status, f"peak RSS grew {grew:,} B", answer)
        limit = srv.call("GET", "/metadata")[1]["server"]["limits"]["max_request_pixels"]
        error = answer["error"]
        assert answer["status"] == 413 and "\n" not in error
        assert f"{16 * side * side:,} pixels" in error and f"{limit:,}" in error and "--max-request-megapixels" in error
        # The server is fine and answers the next request.
        status, answer, _ = srv.call("POST", "/predict", png(COLOURS["red"]), {"Content-Type": "image/png"})
        assert status == 200 and answer["predictions"][0]["class"] == "red"


def test_a_request_just_under_the_pixel_budget_is_served(server):
    """3 x 8,000 px = 24,000 of the 25,000 allowed: answered, one result per image."""
    body, ctype = multipart([("image", f"{name}.png", png(rgb, (80, 100)), "image/png")
                             for name, rgb in COLOURS.items()])
    status, answer, _ = server.call("POST", "/predict", body, {"Content-Type": ctype})
    assert status == 200, answer
    assert [p["class"] for p in answer["predictions"]] == list(COLOURS)
    meta = server.call("GET", "/metadata")[1]["server"]["limits"]
    assert meta["max_request_pixels"] == 25_000 and meta["max_pixels_in_flight"] == 50_000


def test_pixel_gate_bounds_pixels_in_flight_first_come_first_served():
    import asyncio

    from visionkit.serving.limits import PixelGate

    async def scenario() -> tuple[list[str], int, int]:
        gate = PixelGate(10)
        order: list[str] = []
        peak = 0

        async def request(name: str, pixels: int, hold_s: float) -> None:
            nonlocal peak
            async with gate.hold(pixels):
                order.append(name)
                peak = max(peak, gate.in_use)
                await asyncio.sleep(hold_s)

        first = asyncio.create_task(request("a6", 6, 0.05))
        await asyncio.sleep(0)
        # b6 must wait for a6; c3 would fit beside a6 but must not overtake b6; d2 queues and is cancelled
        tasks = [asyncio.create_task(request(n, p, 0.01)) for n, p in (("b6", 6), ("d2", 2), ("c3", 3))]
        await asyncio.sleep(0.01)
        assert order == ["a6"] and gate.in_use == 6
        tasks[1].cancel()
        await asyncio.gather(first, *tasks, return_exceptions=True)
        return order, peak, gate.in_use

    order, peak, left = asyncio.run(scenario())
    assert order == ["a6", "b6", "c3"] and peak <= 10 and left == 0


def test_large_requests_in_flight_hold_a_bounded_number_of_decoded_pixels(tiny):
    """Eight concurrent requests, each at the budget: at most max_pixels_in_flight decoded at once
    (without the gate every request decodes before the first one's graph runs)."""
    import asyncio
    import threading

    from visionkit.serving.limits import Limits
    from visionkit.serving.service import InferenceService
    from visionkit.serving.uploads import Upload

    limits = Limits(max_pixels=20_000, max_request_pixels=40_000)
    service = InferenceService(Model.load(tiny), limits=limits, workers=4)
    held = {"now": 0, "peak": 0}
    lock = threading.Lock()  # _prepare and _finish run on the service's threads
    prepare, finish = service._prepare, service._finish

    def counting_prepare(uploads):
        out = prepare(uploads)
        with lock:
            held["now"] += sum(p.orig_size[0] * p.orig_size[1] for p in out)
            held["peak"] = max(held["peak"], held["now"])
        return out

    def counting_finish(prepared, outputs, options):
        with lock:
            held["now"] -= sum(p.orig_size[0] * p.orig_size[1] for p in prepared)
        return finish(prepared, outputs, options)

    service._prepare, service._finish = counting_prepare, counting_finish
    image = png(COLOURS["green"], (100, 200))  # 20,000 px: two per request reach the budget

    async def main():
        try:
            return await asyncio.gather(*(service.predict([Upload(image, "a", "image/png"),
                                                           Upload(image, "b", "image/png")], {})
                                          for _ in range(8)))
        finally:
            await service.close()

    answers = asyncio.run(main())
    assert [[p["class"] for p in a] for a in answers] == [["green", "green"]] * 8
    assert held["now"] == 0 and 40_000 <= held["peak"] <= limits.max_pixels_in_flight == 80_000, held
