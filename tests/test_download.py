"""download.py against a local server on 127.0.0.1 that answers as each host does: a Hub-like endpoint
(HEAD with X-Repo-Commit, X-Linked-Etag and X-Linked-Size, GET with Range) reached through HF_ENDPOINT, and a
Drive-like one (uc?export=download redirects to a "can't scan for viruses" page whose form holds a confirm
token and whose cookie the file's GET must carry) reached through DEPTHART_GDRIVE_URL. Then the cases that must
fail in one line and leave nothing at the final name: a truncated transfer, a wrong digest, a 404, Drive's
quota page, no server, a full disk; a resume that sends Range; and the paper's name through the tools:
`--checkpoint release` through infer_trt.main, a missing name naming the download command, and
infer_trt.load("release", download=True).
"""
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

import download
import infer_trt
from test_release import small_release  # noqa: F401  (a fixture: the release-layout checkpoint)

ROOT = Path(__file__).resolve().parent.parent
DRIVE_ID = download.REGISTRY["release"].files[0].location
REVISION = "367386cbd701447557c18f0ba8fb3ad7d761ba75"
PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="/download" method="get">
<input type="submit" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="5e6f">
</form></body></html>"""
QUOTA = """<html><body><p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently.
Please try accessing the file again later.</p></body></html>"""


class Host(http.server.BaseHTTPRequestHandler):
    """Both hosts. The test sets `files` (url path -> bytes) and `mode` (ok; cut: the first GET of each file
    stops halfway; quota; 404) and reads `seen` (every request)."""
    files: dict = {}
    mode = "ok"
    seen: list = []
    cut: set = set()

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        Host.seen.append((self.command, url.path, query, self.headers.get("Range"), self.headers.get("Cookie")))
        if Host.mode == "404":
            return self.send_bytes(404, b"not found", "text/plain", body, hub="/resolve/" in url.path)
        if url.path == "/uc":  # Drive: the sharing link redirects to the download host
            if Host.mode == "quota":
                return self.send_bytes(200, QUOTA.encode(), "text/html; charset=utf-8", body)
            self.send_response(303)
            self.send_header("Location", "/download?" + urllib.parse.urlencode({"id": query["id"], "export": "download"}))
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if url.path == "/download":
            if query.get("confirm") != "t" or "download_warning=5e6f" not in (self.headers.get("Cookie") or ""):
                page = PAGE.format(id=query.get("id")).encode()
                return self.send_bytes(200, page, "text/html; charset=utf-8", body, cookie="download_warning=5e6f; Path=/")
            return self.send_file(Host.files["/drive/" + query["id"]], body, attachment="model.safetensors")
        if "/resolve/" in url.path:  # the Hub: /{repo}/resolve/{revision}/{filename}
            data = Host.files.get(url.path.replace(REVISION, "REV"))
            if data is None:
                return self.send_bytes(404, b"Entry not found", "text/plain", body, hub=True)
            return self.send_file(data, body, hub=True)
        self.send_bytes(404, b"", "text/plain", body)

    def send_bytes(self, status, data, ctype, body, cookie=None, hub=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if cookie:
            self.send_header("Set-Cookie", cookie)
        if hub:
            self.send_header("X-Error-Code", "EntryNotFound")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def send_file(self, data, body, attachment=None, hub=False):
        start, status = 0, 200
        ranged = self.headers.get("Range")
        if ranged:
            start, status = int(ranged.split("=")[1].split("-")[0]), 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if attachment:
            self.send_header("Content-Disposition", f'attachment; filename="{attachment}"')
        if hub:
            digest = hashlib.sha256(data).hexdigest()
            self.send_header("X-Repo-Commit", REVISION)
            self.send_header("ETag", f'"{digest}"')
            self.send_header("X-Linked-Etag", f'"{digest}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.end_headers()
        if not body:
            return
        if Host.mode == "cut" and not ranged and self.path not in Host.cut:  # announce all, send half, hang up
            Host.cut.add(self.path)
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Host)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def release_bytes(small_release):
    """test_release's small checkpoint in the release's key layout (the d16 schedule, narrow), as the Drive file."""
    return small_release[1].read_bytes()


@pytest.fixture
def hosts(server, release_bytes, tmp_path, monkeypatch):
    """Fresh server state, a fresh cache, both hosts pointed at the server; -> the cache folder."""
    Host.files, Host.mode, Host.seen, Host.cut = {"/drive/" + DRIVE_ID: release_bytes}, "ok", [], set()
    cache = tmp_path / "weights"
    monkeypatch.setenv("DEPTHART_WEIGHTS", str(cache))
    monkeypatch.setenv("DEPTHART_GDRIVE_URL", server)
    monkeypatch.setenv("HF_ENDPOINT", server)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return cache


def run(script, *args, cwd=ROOT):
    """A tool in a fresh process, from `cwd`, with this process's environment (the hosts and the cache)."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=os.environ.copy())


def leftovers(cache):
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and ".hub" not in p.parts)


# --- Google Drive: the confirmation page, the checkpoint through the tools ----------------------------------
def test_release_downloads_through_the_confirmation_page_then_runs_by_name(hosts, release_bytes, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # infer_trt.main in this process, from another folder; download.py a fresh one
    # before the download: a tool names the exact command, in one line, and downloads nothing
    with pytest.raises(SystemExit) as missing:  # an argument error, as argparse ends one
        infer_trt.main([str(ROOT / "examples/room.png"), "--checkpoint", "release", "--backend", "torch",
                        "--out", str(tmp_path / "out")])
    said = capsys.readouterr()
    assert missing.value.code == 2 and not Host.seen
    assert said.err.strip().count("\n") == 0
    assert f"python {ROOT / 'download.py'} release" in said.err and "--download" in said.err

    got = run("download.py", "release", cwd=tmp_path)  # from another folder
    assert got.returncode == 0, got.stderr
    target = hosts / "release" / "model.safetensors"
    assert target.read_bytes() == release_bytes
    digest = hashlib.sha256(release_bytes).hexdigest()
    assert (hosts / "release" / "model.safetensors.sha256").read_text() == f"{digest}  model.safetensors\n"
    assert leftovers(hosts) == ["model.safetensors", "model.safetensors.sha256"]
    # the flow: sharing link -> redirect -> warning page (sets the cookie) -> confirmed GET carrying the cookie
    paths = [(s[1], s[2].get("confirm"), bool(s[4])) for s in Host.seen]
    assert paths == [("/uc", None, False), ("/download", None, False), ("/download", "t", True)]
    assert "model.safetensors" in got.stderr  # the progress bar names the file

    out = tmp_path / "depth"
    ran = infer_trt.main([str(ROOT / "examples/room.png"), "--checkpoint", "release", "--backend", "torch",
                          "--npy", "--out", str(out)])
    assert ran == 0, capsys.readouterr()
    depth = np.load(out / "room_depth.npy")
    assert depth.ndim == 2 and np.isfinite(depth).all() and depth.std() > 0

    # a second download verifies the copy it has; a corrupted copy is caught by the kept digest
    Host.seen = []
    again = run("download.py", "release")
    assert again.returncode == 0 and "already downloaded, verified" in again.stdout and not Host.seen
    target.write_bytes(release_bytes[:-1] + b"\0")
    bad = run("download.py", "release")
    assert bad.returncode == 1 and "corrupt" in bad.stderr and bad.stderr.count("\n") == 1


def test_interrupted_drive_download_keeps_only_a_part_file_and_resumes_with_range(hosts, release_bytes):
    Host.mode = "cut"
    first = run("download.py", "release", "--quiet")
    assert first.returncode == 1 and "broke off" in first.stderr and "rerun to resume" in first.stderr
    assert first.stderr.count("\n") == 1 and "Traceback" not in first.stderr
    part = hosts / "release" / "model.safetensors.part"
    assert leftovers(hosts) == ["model.safetensors.part"] and part.stat().st_size == len(release_bytes) // 2

    Host.mode, Host.seen = "ok", []
    second = run("download.py", "release", "--quiet")
    assert second.returncode == 0, second.stderr
    file_gets = [s for s in Host.seen if s[2].get("confirm") == "t"]
    assert file_gets[-1][3] == f"bytes={len(release_bytes) // 2}-"  # the server saw the Range request
    assert (hosts / "release" / "model.safetensors").read_bytes() == release_bytes
    assert not part.exists()


@pytest.mark.parametrize("mode, message", [("quota", "too many users downloaded it recently"),
                                           ("404", "not found (404)")])
def test_drive_refusals_are_one_line_and_leave_nothing(hosts, mode, message):
    Host.mode = mode
    result = run("download.py", "release")
    assert result.returncode == 1 and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert leftovers(hosts) == []


def test_no_server_is_one_line(hosts, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("DEPTHART_GDRIVE_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(download.DownloadError, match=r"cannot reach 127\.0\.0\.1:\d+ .*no network"):
        download.fetch("release", progress=False)
    assert leftovers(hosts) == []


def test_a_full_disk_is_one_line_and_keeps_the_part_to_resume(hosts, monkeypatch):
    class Full:
        def __init__(self, path, mode):
            self.f = open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, chunk):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(download, "_open_part", Full)
    with pytest.raises(download.DownloadError, match="disk full .* resumes"):
        download.fetch("release", progress=False)
    assert leftovers(hosts) == ["model.safetensors.part"]


def test_a_wrong_digest_deletes_the_download(hosts, release_bytes, monkeypatch):
    remote = download.Remote("model.safetensors", "checkpoint", "gdrive", DRIVE_ID, len(release_bytes), "0" * 64)
    monkeypatch.setitem(download.REGISTRY, "release", download.Weights("test", (remote,)))
    with pytest.raises(download.DownloadError, match="is not the published 0000"):
        download.fetch("release", progress=False)
    assert leftovers(hosts) == []


# --- the Hub (huggingface_hub through HF_ENDPOINT) ----------------------------------------------------------
def hub_entry(vae: bytes, var: bytes, var_digest=None):
    location = f"FoundationVision/var@{REVISION}"
    Host.files.update({"/FoundationVision/var/resolve/REV/vae_ch160v4096z32.pth": vae,
                       "/FoundationVision/var/resolve/REV/var_d16.pth": var})
    return download.Weights("test", (
        download.Remote("vae_ch160v4096z32.pth", "vae", "hub", location, len(vae), hashlib.sha256(vae).hexdigest()),
        download.Remote("var_d16.pth", "var", "hub", location, len(var), var_digest or hashlib.sha256(var).hexdigest())))


def test_var_d16_downloads_from_the_hub_resuming_a_cut_transfer_and_resolves_by_role(hosts, monkeypatch):
    # var_d16.pth is cut at 12 MB: past huggingface_hub's first 10 MB chunk, which it writes before resuming
    vae, var = os.urandom(300_000), os.urandom(24 << 20)
    monkeypatch.setitem(download.REGISTRY, "var-d16", hub_entry(vae, var))
    with pytest.raises(download.NotDownloaded, match="download.py var-d16"):
        download.resolve("var-d16", role="var")
    Host.mode = "cut"  # huggingface_hub resumes the cut transfer itself, with a Range request
    assert download.resolve("var-d16", role="var", download=True, progress=False) == hosts / "var-d16" / "var_d16.pth"
    assert any(s[0] == "HEAD" and s[1].endswith("/var_d16.pth") for s in Host.seen)
    ranges = [s[3] for s in Host.seen if s[0] == "GET" and s[1].endswith("/var_d16.pth")]
    assert ranges[0] is None and ranges[-1] == f"bytes={10 << 20}-"  # it resumed where its file ended
    assert (hosts / "var-d16" / "var_d16.pth").read_bytes() == var
    assert download.resolve("var-d16", role="vae").read_bytes() == vae
    with pytest.raises(ValueError, match="holds no checkpoint weights"):
        download.resolve("var-d16", role="checkpoint")
    assert download.resolve(str(hosts)) == hosts and download.resolve("no-such-name") == Path("no-such-name")


def test_hub_wrong_digest_and_404_leave_nothing_at_the_final_name(hosts, monkeypatch):
    vae, var = os.urandom(1000), os.urandom(2000)
    monkeypatch.setitem(download.REGISTRY, "var-d16", hub_entry(vae, var, var_digest="f" * 64))
    with pytest.raises(download.DownloadError, match="var_d16.pth: SHA-256 .* is not the published ffff"):
        download.fetch("var-d16", progress=False)
    assert leftovers(hosts) == ["vae_ch160v4096z32.pth", "vae_ch160v4096z32.pth.sha256"]
    Host.mode = "404"
    (hosts / "var-d16" / "vae_ch160v4096z32.pth").unlink()
    with pytest.raises(download.DownloadError, match="404"):
        download.fetch("var-d16", progress=False)
    assert not (hosts / "var-d16" / "vae_ch160v4096z32.pth").exists()


# --- the API ------------------------------------------------------------------------------------------------
def test_load_by_name_downloads_only_when_asked(hosts, release_bytes):
    with pytest.raises(download.NotDownloaded, match="download.py release"):
        infer_trt.load("release", backend="torch", log=lambda *a: None)
    assert not Host.seen
    model = infer_trt.load("release", backend="torch", download=True, log=lambda *a: None)
    depth = model.predict(np.zeros((40, 60, 3), np.uint8) + np.arange(60, dtype=np.uint8)[None, :, None])
    assert depth.shape == (40, 60) and np.isfinite(depth).all()
    assert (hosts / "release" / "model.safetensors").read_bytes() == release_bytes


# --- every tool takes the names, and names the download command when they are missing ------------------------
@pytest.mark.parametrize("tool, argv", [
    ("export", ["--checkpoint", "release", "--out", "x.onnx"]),
    ("evaluate", ["--checkpoint", "release", "--dataset", "synthetic"]),
    ("benchmark", ["--checkpoint", "release"]),
    ("train", ["--init", "release"]),
    ("train", ["--init-vae", "var-d16"]),
    ("train", ["--init-var", "var-d16"]),
])
def test_every_tool_resolves_names_and_downloads_nothing_unasked(hosts, tool, argv, capsys):
    module = __import__(tool)
    entry = "parse_args" if tool in ("benchmark", "train") else "main"
    with pytest.raises(SystemExit) as stop:
        getattr(module, entry)(argv)
    err = capsys.readouterr().err
    name = argv[1]
    assert stop.value.code == 2 and not Host.seen
    assert err.startswith(f"{tool}.py: error: {name} is not downloaded") and err.count("\n") == 1
    assert f"download.py {name}`" in err


def test_train_reads_the_cached_official_files_by_role(hosts, monkeypatch):
    import train
    vae, var = os.urandom(100), os.urandom(200)
    monkeypatch.setitem(download.REGISTRY, "var-d16", hub_entry(vae, var))
    download.fetch("var-d16", progress=False)
    args = train.parse_args(["--init-vae", "var-d16", "--init-var", "var-d16"])
    assert args.init_vae == str(hosts / "var-d16" / "vae_ch160v4096z32.pth")
    assert args.init_var == str(hosts / "var-d16" / "var_d16.pth")
    assert "download" not in train.settings(args)
