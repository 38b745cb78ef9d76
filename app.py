"""A local depth demo in the browser: drop a photograph, see its depth, the per-scale refinement, the ensemble's
uncertainty and a point cloud to turn.

    python app.py                          # http://127.0.0.1:8000/ (the shipped model, an ensemble of 4 samples)
    python app.py --port 8080 --checkpoint runs/x/last.safetensors --samples 8
    python app.py --screenshot docs/app.png   # serve, open ?example=room in headless chromium, save a screenshot

The standard library's http.server and one HTML page with its script inline: no download, no CDN, no Gradio (which
would need the network to install and pulls a web framework in for one page). The page posts the file's bytes to
/predict; the answer is JSON: colour PNGs (base64) of the depth, of the depth after every scale, of the uncertainty
with its legend, and a subsampled point cloud that the page draws on a canvas. A bad upload (empty, not an image,
larger than --max-mb, more than --max-megapixels) gets a one-line message on the page, never a stack trace.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from PIL import Image, ImageOps

import infer_trt as I
from data import pil_to_rgb, read_image, resize

ROOT = Path(__file__).resolve().parent
EXAMPLES = {p.stem: p for p in sorted((ROOT / "examples").glob("*.png"))}
CLOUD_SIDE = 96  # the point cloud's long side in points

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DepthART demo</title>
<style>
 body { font-family: sans-serif; margin: 16px; background: #fafafa; color: #222; }
 #drop { border: 2px dashed #888; padding: 18px; text-align: center; background: #fff; cursor: pointer; }
 #drop.over { background: #eef; }
 #message { margin: 8px 0; min-height: 1.2em; color: #a00; }
 .row { display: flex; gap: 16px; flex-wrap: wrap; margin-top: 10px; }
 .panel { background: #fff; padding: 8px; border: 1px solid #ddd; }
 .panel img { max-width: 340px; max-height: 300px; display: block; }
 #scale { width: 254px; }
 canvas { background: #111; cursor: grab; }
 h3 { margin: 0 0 6px 0; font-size: 14px; }
</style></head>
<body data-state="idle">
<h2>DepthART: depth from one photograph</h2>
<div id="drop">Drop a photograph here, or click to choose one <input id="file" type="file" accept="image/*" hidden></div>
<div id="message"></div>
<div class="row">
 <div class="panel"><h3>photograph</h3><img id="photo" alt=""></div>
 <div class="panel"><h3>depth (near is bright)</h3><img id="depth" alt=""></div>
 <div class="panel"><h3>refinement: after scale <span id="k">-</span></h3><img id="scale" alt="">
   <input id="slider" type="range" min="1" max="1" value="1" style="width: 100%"></div>
 <div class="panel"><h3>uncertainty</h3><img id="unc" alt=""></div>
 <div class="panel"><h3>point cloud (drag to turn)</h3><canvas id="cloud" width="420" height="340"></canvas></div>
</div>
<p id="info" style="font-size: 12px; color: #555"></p>
<script>
const $ = (id) => document.getElementById(id);
let result = null, yaw = 0.5, pitch = 0.25;
function say(text, error) { $("message").textContent = text; $("message").style.color = error ? "#a00" : "#333"; }
function png(b64) { return "data:image/png;base64," + b64; }
async function send(body, url) {
  document.body.dataset.state = "busy"; say("working...", false);
  try {
    const r = await fetch(url, body === null ? {} : {method: "POST", body: body});
    const j = await r.json();
    if (j.error) { document.body.dataset.state = "error"; say(j.error, true); return; }
    result = j; show(); document.body.dataset.state = "done"; say("", false);
  } catch (e) { document.body.dataset.state = "error"; say("the server did not answer (" + e.message + ")", true); }
}
function show() {
  $("photo").src = png(result.photo); $("depth").src = png(result.depth); $("unc").src = png(result.uncertainty);
  $("slider").max = result.scales.length; $("slider").value = result.scales.length; slide();
  $("info").textContent = result.info; draw();
}
function slide() { const k = +$("slider").value; $("k").textContent = k + " of " + result.scales.length;
  $("scale").src = png(result.scales[k - 1]); }
function draw() {
  const c = $("cloud"), g = c.getContext("2d"); g.fillStyle = "#111"; g.fillRect(0, 0, c.width, c.height);
  if (!result) return;
  const p = result.points, n = p.x.length, cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch),
        sp = Math.sin(pitch), f = 1.3 * c.height, order = [];
  for (let i = 0; i < n; i++) {
    const x = p.x[i], y = p.y[i], z = p.z[i] - p.zc;
    const x1 = cy * x + sy * z, z1 = -sy * x + cy * z, y1 = cp * y - sp * z1, z2 = sp * y + cp * z1 + 2.2 * p.scale;
    if (z2 > 1e-3) order.push([z2, c.width / 2 + f * x1 / z2, c.height / 2 - f * y1 / z2, i]);
  }
  order.sort((a, b) => b[0] - a[0]);
  for (const [z, u, v, i] of order) { g.fillStyle = "rgb(" + p.r[i] + "," + p.g[i] + "," + p.b[i] + ")";
    g.fillRect(u, v, 2.2, 2.2); }
}
let drag = null;
$("cloud").onmousedown = (e) => { drag = [e.clientX, e.clientY]; };
window.onmouseup = () => { drag = null; };
window.onmousemove = (e) => { if (!drag) return; yaw += (e.clientX - drag[0]) / 150; pitch += (e.clientY - drag[1]) / 150;
  pitch = Math.max(-1.4, Math.min(1.4, pitch)); drag = [e.clientX, e.clientY]; draw(); };
$("slider").oninput = slide;
$("drop").onclick = () => $("file").click();
$("file").onchange = () => { if ($("file").files.length) send($("file").files[0], "/predict"); };
$("drop").ondragover = (e) => { e.preventDefault(); $("drop").classList.add("over"); };
$("drop").ondragleave = () => $("drop").classList.remove("over");
$("drop").ondrop = (e) => { e.preventDefault(); $("drop").classList.remove("over");
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0], "/predict"); else say("drop a file", true); };
const example = new URLSearchParams(location.search).get("example");
if (example) send(null, "/example?name=" + encodeURIComponent(example));
</script></body></html>
"""


class BadUpload(ValueError):
    """What the page shows: one line about the upload."""


def b64png(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_upload(body: bytes, max_megapixels: float) -> np.ndarray:
    """The uploaded file's bytes -> RGB float32 (H, W, 3) in [0, 1]; BadUpload with one line otherwise."""
    if not body:
        raise BadUpload("the upload is empty: choose an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(body))
            if im.width * im.height > max_megapixels * 1e6:
                raise BadUpload(f"the image is {im.width}x{im.height}, over {max_megapixels:g} megapixels: "
                                f"resize it first")
            im.load()
            return pil_to_rgb(ImageOps.exif_transpose(im))
    except BadUpload:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadUpload("the image claims too many pixels (a decompression bomb?): refused") from None
    except Exception as e:  # noqa: BLE001 (whatever a bad file raises is one line on the page)
        raise BadUpload(f"not an image this demo can read ({type(e).__name__})") from None


class Demo:
    """The model behind the page: an ensemble of `samples` rollouts with every scale's depth."""

    def __init__(self, checkpoint=None, samples: int = 4, fov: float = 60.0):
        path = I.DEFAULT_CHECKPOINT if checkpoint is None else checkpoint
        self.backend = I.load_backend(path, "torch", all_scales=True, samples=samples, seed=0,
                                      sampling="release" if samples > 1 else "greedy")
        self.fov, self.lock = fov, threading.Lock()

    def answer(self, image: np.ndarray) -> dict:
        with self.lock:  # one generator and one model: one request at a time
            self.backend.pick = I.Z.sampler(self.backend.sampling, torch.Generator().manual_seed(0))
            depth, scales, unc = I.predict_arrays(self.backend, [image], "pad", scales=True, with_uncertainty=True)[0]
        H, W = depth.shape
        lo, hi = float(depth.min()), float(depth.max())
        view = lambda a: resize(a, *shown(H, W)) if max(H, W) > 512 else a  # noqa: E731
        out = {"photo": b64png((np.clip(view(image.transpose(2, 0, 1)).transpose(1, 2, 0), 0, 1) * 255)
                               .round().astype(np.uint8)),
               "depth": b64png(I.colorize(view(depth), "inferno_r")),
               "scales": [b64png(I.colorize(s, "inferno_r", lo, hi)) for s in scales]}
        if unc is None:
            unc = np.zeros_like(depth)
        out["uncertainty"] = base64.b64encode(I.uncertainty_png(view(unc))).decode("ascii")
        out["points"] = cloud(depth, image, self.fov)
        out["info"] = (f"{W}x{H} image; {self.backend.name}; uncertainty: per-pixel std of the aligned samples; "
                       f"cloud: pinhole camera, horizontal fov {self.fov:g} degrees, relative depth")
        return out


def shown(H: int, W: int, side: int = 512) -> tuple[int, int]:
    f = side / max(H, W)
    return max(1, round(H * f)), max(1, round(W * f))


def cloud(depth: np.ndarray, image: np.ndarray, fov: float) -> dict:
    """Depth and image -> a point cloud of at most CLOUD_SIDE points on the long side, as lists for the page."""
    h, w = shown(*depth.shape, min(CLOUD_SIDE, max(depth.shape)))
    z, rgb = resize(depth, h, w), resize(image.transpose(2, 0, 1), h, w).transpose(1, 2, 0)
    f = w / (2 * math.tan(math.radians(fov) / 2))
    v, u = np.mgrid[0:h, 0:w]
    keep = z > 1e-4
    x, y = (u - (w - 1) / 2) / f * z, -(v - (h - 1) / 2) / f * z
    col = (np.clip(rgb, 0, 1) * 255).round().astype(int)
    r3 = lambda a: np.round(a[keep], 4).tolist()  # noqa: E731
    return {"x": r3(x), "y": r3(y), "z": r3(z), "r": col[..., 0][keep].tolist(), "g": col[..., 1][keep].tolist(),
            "b": col[..., 2][keep].tolist(), "zc": float(np.median(z[keep])) if keep.any() else 0.0,
            "scale": float(np.median(z[keep])) if keep.any() else 1.0}


def make_server(demo: Demo, port: int = 8000, host: str = "127.0.0.1", max_mb: float = 20.0,
                max_megapixels: float = 40.0) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def send_json(self, obj, status=200):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def answer(self, load):
            try:
                self.send_json(demo.answer(load()))
            except BadUpload as e:
                self.send_json({"error": str(e)}, 400)
            except Exception as e:  # noqa: BLE001 (the page gets one line; the console gets the type)
                print(f"app.py: request failed: {type(e).__name__}: {e}", file=sys.stderr)
                self.send_json({"error": f"the model could not process this image ({type(e).__name__})"}, 500)

        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/":
                body = PAGE.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif url.path == "/example":
                name = parse_qs(url.query).get("name", [""])[0]
                if name not in EXAMPLES:
                    self.send_json({"error": f"no example {name!r}; there are {', '.join(EXAMPLES)}"}, 404)
                else:
                    self.answer(lambda: read_image(EXAMPLES[name]))
            else:
                self.send_json({"error": "not found"}, 404)

        def do_POST(self):
            if urlparse(self.path).path != "/predict":
                return self.send_json({"error": "not found"}, 404)
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            if n < 0 or n > max_mb * 2**20:
                self.close_connection = True
                left = n if 0 < n <= 256 * 2**20 else 0  # read (and drop) what the browser sends, so that it
                while left > 0:                          # finishes its upload and shows the message, not a reset
                    chunk = self.rfile.read(min(left, 1 << 20))
                    left = left - len(chunk) if chunk else 0
                return self.send_json({"error": f"the upload is {n / 2**20:.1f} MB, over the {max_mb:g} MB limit"
                                       if n > 0 else "the upload has no valid length"}, 413)
            body = self.rfile.read(n) if n else b""
            self.answer(lambda: decode_upload(body, max_megapixels))

        def log_message(self, fmt, *args):  # quiet: one line per request on stderr would drown the console
            pass

    return ThreadingHTTPServer((host, port), Handler)


def find_chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def chromium(url: str, *flags: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Headless chromium on url with flags (e.g. --dump-dom, --screenshot=PATH); it waits for the page's fetch."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on this machine (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               f"--user-data-dir={profile}", "--virtual-time-budget=60000", *flags, url],
                              capture_output=True, text=True, timeout=timeout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--checkpoint", help="a .safetensors checkpoint (default the shipped model)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--samples", type=int, default=4, help="sampled rollouts in the ensemble (1: greedy, no uncertainty)")
    p.add_argument("--max-mb", type=float, default=20.0, help="largest upload accepted (default 20 MB)")
    p.add_argument("--max-megapixels", type=float, default=40.0, help="largest image accepted (default 40 MP)")
    p.add_argument("--screenshot", help="write a screenshot of the page with examples/room.png to this PNG and exit")
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error("--samples must be at least 1")
    try:
        server = make_server(Demo(args.checkpoint, args.samples), 0 if args.screenshot else args.port,
                             max_mb=args.max_mb, max_megapixels=args.max_megapixels)
    except (OSError, ValueError) as e:
        print(f"app.py: {e}", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    if args.screenshot:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            r = chromium(url + "?example=room", f"--screenshot={Path(args.screenshot).resolve()}",
                         "--window-size=1500,900", "--hide-scrollbars")
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"app.py: no screenshot: {e}", file=sys.stderr)
            return 2
        finally:
            server.shutdown()
        print(f"wrote {args.screenshot}" if r.returncode == 0 else f"chromium failed: {r.stderr.strip()[-300:]}")
        return r.returncode
    print(f"serving {url} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
