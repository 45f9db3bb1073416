"""The Ray Serve application (visionkit.serving.ray_app), run locally on the session's Ray and
called over HTTP: the same routes, answers and errors as `visionkit serve`."""

from __future__ import annotations

import io
import socket

import pytest

from servehelp import Server, multipart, png, tiny_classifier


@pytest.fixture(scope="module")
def serve_app(ray_cluster, tmp_path_factory):
    from ray import serve

    from visionkit.serving.ray_app import build

    model = tiny_classifier(tmp_path_factory.mktemp("ray_serve") / "tiny.onnx")
    with socket.socket() as probe:  # Serve binds its own proxy; take a port nobody holds now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build({"model": str(model), "max_batch": 4, "max_body_mb": 0.25, "max_request_megapixels": 30}),
                  name="visionkit-test", route_prefix="/")
        yield Server(None, f"http://127.0.0.1:{port}")
    finally:
        serve.shutdown()  # frees the replica's CPU for the tests after this one


def test_ray_serve_answers_like_the_server(serve_app):
    status, body, _ = serve_app.call("GET", "/health")
    assert status == 200 and body["task"] == "classification"
    status, body, _ = serve_app.call("POST", "/predict?top_k=1", png((10, 20, 230)), {"Content-Type": "image/png"})
    assert status == 200 and body["predictions"][0]["class"] == "blue" and len(body["predictions"][0]["top_k"]) == 1
    data, ctype = multipart([("image", "a.png", png((230, 20, 10)), "image/png"),
                             ("image", "b.png", png((10, 230, 20)), "image/png")])
    status, body, _ = serve_app.call("POST", "/predict", data, {"Content-Type": ctype})
    assert status == 200 and [p["class"] for p in body["predictions"]] == ["red", "green"]
    meta = serve_app.call("GET", "/metadata")[1]
    assert meta["server"]["max_batch"] == 4 and meta["server"]["limits"]["max_body_bytes"] == 262144
    assert meta["server"]["limits"]["max_request_pixels"] == 30_000_000


def test_ray_serve_errors_are_the_same_json(serve_app):
    assert serve_app.call("POST", "/predict", b"{}", {"Content-Type": "application/json"})[0] == 415
    status, body, _ = serve_app.call("POST", "/predict", b"garbage", {"Content-Type": "image/png"})
    assert status == 400 and "cannot decode image" in body["error"]
    status, body, _ = serve_app.call("POST", "/predict", b"\0" * 300_000, {"Content-Type": "image/png"})
    assert status == 413 and body["status"] == 413
    # Two 16 MP images (each under max_megapixels, 25) in a few kB: 32 MP over the request's 30, refused unread.
    from PIL import Image

    one = io.BytesIO()
    Image.new("1", (4000, 4000), 1).save(one, format="PNG", optimize=True)
    data, ctype = multipart([("image", f"{i}.png", one.getvalue(), "image/png") for i in range(2)])
    status, body, _ = serve_app.call("POST", "/predict", data, {"Content-Type": ctype})
    assert status == 413 and "32,000,000 pixels" in body["error"] and "max_request_megapixels" in body["error"]


def test_builder_arguments_are_checked():
    from pydantic import ValidationError

    from visionkit.serving.ray_app import build

    with pytest.raises(ValidationError, match="max_bacth"):
        build({"model": "m.onnx", "max_bacth": 8})
    with pytest.raises(ValidationError, match="model"):
        build({})


def test_ray_serve_has_the_demo_page(serve_app):
    """The replicas serve the same page and option list as `visionkit serve` (tests/test_browser.py drives it)."""
    import urllib.request

    from visionkit.serving import page

    with urllib.request.urlopen(serve_app.url + "/", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/html")
        assert resp.headers["Content-Security-Policy"] == page.CSP
        assert resp.read().decode() == page.HTML
    status, body, _ = serve_app.call("GET", "/options")
    assert status == 200 and body["task"] == "classification" and [o["name"] for o in body["options"]] == ["top_k"]
