"""Tests of infer_trt.py end to end on a tiny checkpoint written here: images of every mode, bad files."""
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import depthart as D
import export as E
import infer_trt as I


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = E.lively(D.DepthART(D.Config.tiny()))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"config": json.dumps(model.cfg.to_dict())})
    return path


def png_bomb(path, side=30000):
    """A PNG header claiming side x side pixels (far past Pillow's decompression-bomb limit)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Good images (RGB JPEG rotated by EXIF, grey, RGBA, 16-bit grey, CMYK) and bad files."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((40, 72, 3)) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display, so the image is 72 high and 40 wide
    rgb.save(d / "rotated.jpg", exif=exif)
    Image.fromarray((rng.random((70, 50)) * 255).astype(np.uint8), "L").save(d / "grey.png")
    Image.fromarray((rng.random((40, 40, 4)) * 255).astype(np.uint8), "RGBA").save(d / "rgba.png")
    Image.fromarray((rng.random((33, 65)) * 65535).astype(np.uint16)).save(d / "grey16.png")
    Image.fromarray((rng.random((60, 60, 3)) * 255).astype(np.uint8)).convert("CMYK").save(d / "cmyk.jpg")
    good = {"rotated": (72, 40), "grey": (70, 50), "rgba": (40, 40), "grey16": (33, 65), "cmyk": (60, 60)}
    (d / "text.jpg").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    data = (d / "rotated.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    png_bomb(d / "bomb.png")
    return d, good, ["text.jpg", "empty.png", "truncated.jpg", "bomb.png"]


@pytest.fixture(scope="module")
def first_run(checkpoint, folder, tmp_path_factory):
    d, good, bad = folder
    out = tmp_path_factory.mktemp("out")
    cache = tmp_path_factory.mktemp("cache")
    args = [str(d), str(d / "missing.jpg"), "--checkpoint", str(checkpoint), "--out", str(out),
            "--cache-dir", str(cache), "--backend", "ort", "--npy", "--ply", "--scales", "--batch", "2"]
    return args, out, cache


def run_main(args, capsys):
    code = I.main(args)
    return code, capsys.readouterr().out


def test_good_images_written_bad_ones_one_line_each_exit_1(first_run, folder, capsys):
    args, out, _ = first_run
    d, good, bad = folder
    code, text = run_main(args, capsys)
    assert code == 1
    lines = text.splitlines()
    for name in bad + ["missing.jpg"]:
        assert sum(name in ln for ln in lines) == 1, f"want one line for {name}:\n{text}"
    assert "5 images written" in lines[-1] and "5 failed" in lines[-1] and "CPUExecutionProvider" in lines[-1]
    for stem, (h, w) in good.items():
        for suffix in ("_depth.png", "_depth_color.png", "_depth.npy", ".ply", "_scales.png"):
            assert (out / f"{stem}{suffix}").is_file(), f"{stem}{suffix} missing"
        depth16 = np.asarray(Image.open(out / f"{stem}_depth.png"))
        assert depth16.dtype == np.uint16 and depth16.shape == (h, w)  # the original size, EXIF applied
        depth = np.load(out / f"{stem}_depth.npy")
        assert depth.shape == (h, w) and 0 <= depth.min() and depth.max() <= 1
        assert np.abs(depth16 / 65535.0 - depth).max() <= 1 / 65535  # the 16-bit PNG round trip
        assert Image.open(out / f"{stem}_depth_color.png").size == (w, h)
        header = (out / f"{stem}.ply").read_bytes()[:400].split(b"end_header")[0].decode()
        assert f"element vertex {(depth > 0).sum()}" in header
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary files left behind


def test_rerun_without_overwrite_skips_and_keeps_files(first_run, capsys):
    args, out, cache = first_run
    before = {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out)}
    code, text = run_main(args, capsys)
    assert code == 1  # the bad files still fail
    assert "0 images written" in text and "5 skipped" in text and "exporting" not in text  # cached graph
    assert before == {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out)}
    code, text = run_main(args + ["--overwrite"], capsys)
    assert "5 images written" in text


def test_torch_and_onnxruntime_backends_agree(checkpoint, first_run):
    _, _, cache = first_run
    torch_backend = I.load_backend(checkpoint, "torch")
    ort_backend = I.load_backend(checkpoint, "ort", batch=2, all_scales=True, cache_dir=cache)  # cached graph
    assert torch_backend.image_size == ort_backend.image_size == 64 and ort_backend.batch == 2
    images = E.sample_images(3, 64).numpy()  # 3 images through a batch-2 graph: padded last chunk
    a, b = torch_backend.predict(images), ort_backend.predict(images)
    assert a.shape == b.shape == (3, 1, 64, 64)
    assert np.abs(a - b).max() <= 1e-4


def test_load_backend_reads_an_onnx_graph_directly(first_run):
    _, _, cache = first_run
    graph = next(cache.rglob("*.onnx"))
    backend = I.load_backend(graph, "ort")
    assert backend.image_size == 64
    assert backend.predict(E.sample_images(1, 64).numpy()).shape == (1, 1, 64, 64)


def test_missing_default_checkpoint_says_what_to_pass(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, text = run_main(["photo.jpg"], capsys)
    assert code == 2 and "--checkpoint" in text and str(I.DEFAULT_CHECKPOINT) in text


def test_forced_tensorrt_without_tensorrt_is_one_line_and_exit_2(checkpoint, folder, tmp_path, capsys, monkeypatch):
    def missing():
        raise E.EngineUnavailable("TensorRT is not installed")
    monkeypatch.setattr(E, "import_tensorrt", missing)
    d, _, _ = folder
    code, text = run_main([str(d / "grey.png"), "--checkpoint", str(checkpoint), "--backend", "trt",
                           "--out", str(tmp_path), "--cache-dir", str(tmp_path)], capsys)
    assert code == 2 and text.strip().splitlines()[-1].startswith("cannot run") and "TensorRT" in text
    assert not list(tmp_path.glob("*.png"))


def test_output_names_stay_unique():
    from pathlib import Path
    stems = I.output_stems([Path("a/x.jpg"), Path("b/x.jpg"), Path("c/x.png"), Path("y.png")])
    assert len(set(stems)) == 4 and stems[0] == "x" and stems[-1] == "y"
