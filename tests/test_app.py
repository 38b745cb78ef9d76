"""Tests of app.py, the browser demo, on a tiny random model: the page, an upload, bad uploads, a real browser."""
import base64
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

import app
import export as E
import zoo as Z


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads contend with other jobs on a shared 2-core machine
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    Z.save_checkpoint(path, E.lively(Z.build(Z.preset("tiny"))), {"stage": "transformer"})
    srv = app.make_server(app.Demo(path, samples=2), port=0, max_mb=0.5, max_megapixels=1.0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    torch.set_num_threads(before)


def post(url, body: bytes):
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/predict", data=body, method="POST")) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def png_bytes(h, w, seed=0, flat=False):
    buf = io.BytesIO()
    rgb = np.full((h, w, 3), 128, np.uint8) if flat else (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_page_and_a_photograph(server):
    page = urllib.request.urlopen(server + "/").read().decode()
    assert "<canvas" in page and 'type="range"' in page and "http" not in page.split("<script>")[1]  # offline
    status, j = post(server, png_bytes(30, 50))
    assert status == 200 and "error" not in j
    depth = np.array(Image.open(io.BytesIO(base64.b64decode(j["depth"]))))
    assert depth.shape == (30, 50, 3) and len(j["scales"]) == 6
    assert Image.open(io.BytesIO(base64.b64decode(j["uncertainty"]))).size[0] > 50  # map and legend
    pts = j["points"]
    assert 0 < len(pts["x"]) == len(pts["z"]) == len(pts["r"]) <= 30 * 50


@pytest.mark.parametrize("body, words", [(b"", "empty"), (b"this is not an image", "not an image"),
                                         (png_bytes(1100, 1000, flat=True), "over 1 megapixels"),
                                         (b"x" * (2 << 20), "over the 0.5 MB limit")])
def test_bad_uploads_get_one_line_not_a_stack_trace(server, body, words):
    status, j = post(server, body)
    assert status in (400, 413) and words in j["error"] and "Traceback" not in j["error"] and "\n" not in j["error"]


@pytest.mark.skipif(app.find_chromium() is None, reason="no chromium here (apt-get install -y chromium) to drive "
                                                        "the page in a real headless browser")
def test_a_real_headless_browser_renders_the_example(server):
    r = app.chromium(server + "/?example=room", "--dump-dom")
    assert 'data-state="done"' in r.stdout, r.stderr[-500:]
    assert "data:image/png;base64," in r.stdout
