"""Tests of infer_trt.py end to end on a small random checkpoint written here (conftest.mini_config): images of
every mode, bad files."""
import dataclasses
import json
import math
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
import export as E
import infer_trt as I
import zoo as Z
from conftest import Started, mini_config, selected

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = E.lively(Z.build(mini_config()))  # what is checked here does not depend on the model's size
    path = tmp_path_factory.mktemp("ckpt") / "mini.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"config": json.dumps(dataclasses.asdict(model.cfg))})
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
    # what "earlier code" exported for the same options (the CLI's default on a CPU: INT8), to be replaced
    stale = cache / E.file_sha256(checkpoint)[:16] / "depthart-b2-scales-int8-opset17-0123456789.onnx"
    stale.parent.mkdir()
    stale.write_bytes(b"old graph")
    args = [str(d), str(d / "missing.jpg"), "--checkpoint", str(checkpoint), "--out", str(out),
            "--cache-dir", str(cache), "--backend", "ort", "--npy", "--ply", "--scales", "--batch", "2"]
    return args, out, cache


def run_main(args, capsys):
    code = I.main(args)
    return code, capsys.readouterr().out


def test_good_images_written_bad_ones_one_line_each_exit_1(first_run, folder, capsys):
    args, out, cache = first_run
    d, good, bad = folder
    code, text = run_main(args, capsys)
    assert code == 1
    assert [p.name for p in cache.rglob("*.onnx*")] == [f"depthart-b2-scales-int8-opset{E.OPSET}-{I._code_digest()}.onnx"]
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


def test_nothing_readable_is_said_before_any_backend_loads(tmp_path, capsys):
    code, text = run_main([str(tmp_path / "missing.jpg"), str(tmp_path), "--out", str(tmp_path / "out")], capsys)
    lines = text.splitlines()
    assert code == 1 and len(lines) == 3 and "backend" not in text
    assert "missing.jpg: no such file" in lines[0] and "holds no image files" in lines[1]
    assert lines[2] == "nothing to run: 2 input(s) named, none readable"


def test_a_new_export_removes_what_earlier_code_exported_for_the_same_options_only(tmp_path):
    d = tmp_path / "0123456789abcdef"
    d.mkdir()
    names = ["depthart-b1-opset17-aaaaaaaaaa.onnx", "depthart-b1-opset17-aaaaaaaaaa.onnx.data",  # stale, with data
             "depthart-b1-opset18-bbbbbbbbbb.onnx",  # stale: another opset
             "depthart-b1-opset17-cccccccccc.onnx",  # the new one
             "depthart-b1-scales-opset17-aaaaaaaaaa.onnx", "depthart-b1-int8-opset17-aaaaaaaaaa.onnx",
             "depthart-b2-opset17-aaaaaaaaaa.onnx", "depthart-b1-k3-opset17-aaaaaaaaaa.onnx",  # other options
             "depthart-b1-opset17-notours.onnx", "notes.txt", "abc123.engine"]  # not the cache's graph names
    for n in names:
        (d / n).write_bytes(b"x")
    lines = []
    removed = I.prune_stale_graphs(d / names[3], log=lines.append)
    assert sorted(p.name for p in removed) == sorted(names[:3])
    assert sorted(os.listdir(d)) == sorted(names[3:]) and len(lines) == 1 and "3 file(s)" in lines[0]
    assert I.prune_stale_graphs(d / names[3], log=lines.append) == [] and len(lines) == 1  # nothing more, silent


def test_rerun_without_overwrite_skips_and_keeps_files(first_run, capsys):
    args, out, cache = first_run
    before = {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out)}
    code, text = run_main(args, capsys)
    assert code == 1  # the bad files still fail
    assert "0 images written" in text and "5 skipped" in text and "exporting" not in text  # cached graph
    assert before == {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out)}
    code, text = run_main(args + ["--overwrite"], capsys)
    assert "5 images written" in text


@pytest.fixture(scope="module")
def ort_backend(checkpoint, first_run):
    """The FP32 graph at batch 2, exported once into first_run's cache (which holds the CLI's default on a CPU, the
    INT8 graph): the Python API, the video and the agreement with PyTorch run it."""
    return I.load_backend(checkpoint, "ort", batch=2, cache_dir=first_run[2])


def test_torch_and_onnxruntime_backends_agree(checkpoint, ort_backend):
    torch_backend = I.load_backend(checkpoint, "torch")
    S = mini_config().image_size
    assert torch_backend.image_size == ort_backend.image_size == S and ort_backend.batch == 2
    images = E.sample_images(3, S).numpy()  # 3 images through a batch-2 graph: padded last chunk
    a, b = torch_backend.predict(images), ort_backend.predict(images)
    assert a.shape == b.shape == (3, 1, S, S)
    assert np.abs(a - b).max() <= 1e-4


def test_load_backend_reads_an_onnx_graph_directly(first_run):
    _, _, cache = first_run
    graph = next(cache.rglob("*.onnx"))
    backend = I.load_backend(graph, "ort")
    S = mini_config().image_size
    assert backend.image_size == S
    assert backend.predict(E.sample_images(1, S).numpy()).shape == (1, 1, S, S)


def test_missing_default_checkpoint_says_what_to_pass(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(I, "DEFAULT_CHECKPOINT", tmp_path / "weights" / "missing.safetensors")
    code, text = run_main(["photo.jpg", "--checkpoint", str(I.DEFAULT_CHECKPOINT)], capsys)
    assert code == 2 and "--checkpoint" in text and str(I.DEFAULT_CHECKPOINT) in text


def test_default_checkpoint_does_not_depend_on_the_working_directory():
    assert I.DEFAULT_CHECKPOINT.is_absolute() and I.DEFAULT_CHECKPOINT.is_file()


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
    stems = I.output_stems([Path("a/x.jpg"), Path("b/x.jpg"), Path("c/x.png"), Path("y.png")])
    assert len(set(stems)) == 4 and stems[0] == "x" and stems[-1] == "y"


# ---------------------------------------------------------------------------------------------
# Any aspect ratio, the Python API, point-cloud intrinsics, stage-1 checkpoints, --out mistakes
# ---------------------------------------------------------------------------------------------
def test_fit_square_pads_and_crops_back_exactly():
    yy, xx = np.meshgrid(np.linspace(0, 1, 32), np.linspace(0, 1, 64), indexing="ij")
    x = np.stack([yy, xx, yy * xx]).astype(np.float32)  # smooth, 2:1: halves to 16 x 32 in a 32 square
    padded, box = data.fit_square(x, 32, "pad")
    assert padded.shape == (3, 32, 32) and box == (8, 0, 16, 32)
    np.testing.assert_array_equal(padded[:, :8], np.repeat(padded[:, 8:9], 8, 1))  # edge padding above
    back = data.unfit_square(padded, box, 32, 64)
    assert back.shape == (3, 32, 64) and np.abs(back - x).mean() < 0.01  # down and up again: the geometry kept
    squashed, box = data.fit_square(x, 32, "squash")
    assert squashed.shape == (3, 32, 32) and box == (0, 0, 32, 32)


def test_python_api_takes_paths_pil_images_and_arrays_of_any_size(ort_backend, folder):
    d, good, _ = folder
    model = I.DepthModel(ort_backend)
    from_path = model.predict(d / "rotated.jpg")
    assert from_path.shape == good["rotated"] and from_path.dtype == np.float32
    with Image.open(d / "rotated.jpg") as im:  # EXIF rotation applied to PIL images too
        np.testing.assert_allclose(model.predict(im), from_path, atol=1e-6)
    rgb8 = (data.read_image(d / "cmyk.jpg") * 255).round().astype(np.uint8)
    assert model.predict(rgb8).shape == (60, 60)
    assert model.predict(rgb8[:, :40].astype(np.float32) / 255).shape == (60, 40)
    assert model.predict(np.zeros((20, 90), np.uint8)).shape == (20, 90)  # grey
    with pytest.raises(ValueError, match="expected an image"):
        model.predict(np.zeros((4, 4, 2)))


def test_ply_intrinsics_from_flags_then_exif_then_fov(tmp_path):
    rgb = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 28  # FocalLengthIn35mmFilm
    rgb.save(tmp_path / "exif.jpg", exif=exif)
    rgb.save(tmp_path / "plain.jpg")
    f_exif = 28 * math.hypot(40, 30) / math.hypot(36, 24)
    assert data.exif_focal_px(tmp_path / "exif.jpg") == pytest.approx(f_exif)
    assert data.exif_focal_px(tmp_path / "plain.jpg") is None
    args = I.parse_args(["x", "--fov", "90"])
    assert I.intrinsics(args, tmp_path / "exif.jpg", 30, 40)[:4] == pytest.approx((f_exif, f_exif, 19.5, 14.5))
    assert I.intrinsics(args, tmp_path / "plain.jpg", 30, 40)[:4] == pytest.approx((20, 20, 19.5, 14.5))
    args = I.parse_args(["x", "--fx", "50", "--cx", "10"])
    K = I.intrinsics(args, tmp_path / "exif.jpg", 30, 40)
    assert K[:4] == (50, 50, 10, 14.5) and K[4] == "--fx/--fy"
    depth = np.full((30, 40), 2.0, np.float32)
    I.save_ply(tmp_path / "c.ply", depth, np.zeros((30, 40, 3)), K)
    raw = (tmp_path / "c.ply").read_bytes()
    header, body = raw.split(b"end_header\n")
    assert b"fx 50.000" in header
    v = np.frombuffer(body, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    assert v["x"][0] == pytest.approx((0 - 10) / 50 * 2) and v["y"][0] == pytest.approx(14.5 / 50 * 2)


def test_a_stage1_checkpoint_is_refused_in_one_line(checkpoint, folder, tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    stage1 = tmp_path / "vqvae.safetensors"
    save_file(load_file(str(checkpoint)), str(stage1),
              metadata={"config": json.dumps(dataclasses.asdict(mini_config())), "meta": json.dumps({"stage": "vqvae"})})
    with pytest.raises(ValueError, match="stage-1"):
        I.load(stage1, backend="torch")
    code, text = run_main([str(folder[0] / "grey.png"), "--checkpoint", str(stage1), "--out", str(tmp_path / "o")],
                          capsys)
    assert code == 2 and "stage-1 (VQ-VAE only) checkpoint" in text.splitlines()[-1]


@pytest.mark.parametrize("out", ["file", "/proc/depthart-test"])
def test_unusable_out_is_one_line_before_any_work(checkpoint, folder, tmp_path, capsys, out):
    if out == "file":
        out = tmp_path / "a-file"
        out.write_text("x")
    code, text = run_main([str(folder[0] / "grey.png"), "--checkpoint", str(checkpoint), "--out", str(out)], capsys)
    assert code == 2 and len(text.strip().splitlines()) == 1 and text.startswith("--out: ") and str(out) in text


@pytest.fixture(scope="module", autouse=True)
def out_is_a_file(request, tmp_path_factory):
    """infer_trt.py's command line in a fresh interpreter, from another folder holding a file `a-file` given as
    --out, started as this module begins (where its test is selected): it imports torch on one core while the
    tests here run on the other; test_cli_runs_from_another_directory_and_errors_are_one_line reads the result."""
    if not selected(request, "test_cli_runs_from_another_directory_and_errors_are_one_line"):
        yield None
        return
    tmp_path = tmp_path_factory.mktemp("out_is_a_file")
    (tmp_path / "a-file").write_text("x")
    run = Started([sys.executable, str(ROOT / "infer_trt.py"), "nothing.png", "--out", "a-file"], cwd=tmp_path)
    yield run
    run.stop()


def test_cli_runs_from_another_directory_and_errors_are_one_line(out_is_a_file):
    res = out_is_a_file.result()
    assert res.returncode == 2 and "Traceback" not in res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1] == "--out: a-file exists and is a file, not a folder"


# ---------------------------------------------------------------------------------------------
# Videos and frame sequences
# ---------------------------------------------------------------------------------------------
def write_clip(path, frames, fps):
    import imageio_ffmpeg
    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", quality=None,
                                         macro_block_size=1, ffmpeg_log_level="error", output_params=["-crf", "12"])
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()


def read_clip(path):
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return meta, np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]).astype(np.float64)


def test_a_three_second_video_through_the_cli_is_a_steady_depth_video(checkpoint, first_run, ort_backend, tmp_path,
                                                                       monkeypatch, capsys):
    from scenes import render_world
    scene = render_world(data.TEST_SEED_START, size=(48, 80), family="box_room", augment=False)
    still = (scene["image"] * 255).round().astype(np.uint8)
    write_clip(tmp_path / "clip.mp4", [still] * 30, fps=10)  # 3 s of a static scene at 10 fps
    # --precision fp32 --batch 2: the graph ort_backend exported (a static scene is steady in any precision);
    # the CLI's default INT8 graph at batch 1 would be one more export, which the folder of images already runs
    monkeypatch.chdir(tmp_path)  # the command line's main, in this process, with paths relative to the clip's folder
    code, text = run_main(["clip.mp4", "--checkpoint", str(checkpoint), "--backend", "ort", "--precision", "fp32",
                           "--batch", "2", "--cache-dir", str(first_run[2]), "--out", "out", "--frames"], capsys)
    assert code == 0, text
    assert "clip: 30 frames" in text and "exporting" not in text  # the cached graph
    meta, frames = read_clip(tmp_path / "out" / "clip_depth.mp4")
    assert frames.shape == (30, 48, 80, 3) and meta["fps"] == 10
    change = np.abs(np.diff(frames, axis=0)).mean()  # mean change of a colour level from frame to frame
    print(f"static scene: mean frame-to-frame change {change:.3f} of 255")
    assert change < 1.0
    pngs = sorted((tmp_path / "out" / "clip_depth_frames").glob("*.png"))
    assert len(pngs) == 30 and np.asarray(Image.open(pngs[0])).shape == (48, 80)
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".")]  # the temporary file is gone


class ScaleJitter(I.Backend):
    """A backend whose depth is right up to a random scale per call: what a relative-depth model gives."""
    name, image_size = "jitter", 32

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def _run(self, images):
        ramp = 0.2 + 0.6 * np.linspace(0, 1, 32, dtype=np.float32)[:, None].repeat(32, 1)
        return {"depth": (ramp * self.rng.uniform(0.5, 1.0))[None, None].repeat(len(images), 0)}


def test_sequence_frames_are_scaled_to_one_another_and_a_bad_frame_costs_a_line(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(8):
        Image.fromarray(np.full((24, 40, 3), 100, np.uint8)).save(frames / f"{i:03d}.png")
    (frames / "004.png").write_bytes(b"not a png")
    args = I.parse_args([str(frames), "--sequence", "--fps", "5"])
    (_, [(name, source)], problems) = I.collect_inputs([str(frames)], sequence=True)
    assert name == "frames" and len(source) == 8 and not problems
    n, problems = I.run_clip(ScaleJitter(), name, source, tmp_path, args)
    assert n == 7 and len(problems) == 1 and "004.png" in problems[0]
    meta, video = read_clip(tmp_path / "frames_depth.mp4")
    assert video.shape == (7, 24, 40, 3) and meta["fps"] == 5
    assert np.abs(np.diff(video, axis=0)).mean() < 1.0  # the per-call scales are gone


# ---------------------------------------------------------------------------------------------
# TensorRT paths with a fake TensorRT module
# ---------------------------------------------------------------------------------------------
def test_unwritable_engine_folder_falls_back_to_onnxruntime(first_run, ort_backend, fake_tensorrt, tmp_path):
    fake = fake_tensorrt()
    graph = next(p for p in first_run[2].rglob("*.onnx") if "int8" not in p.name)  # ort_backend's FP32 graph
    blocked = tmp_path / "a-file"
    blocked.write_text("x")  # a folder that cannot be created, even by root
    lines = []
    backend = I.load_backend(graph, "auto", cache_dir=blocked / "engines", log=lines.append)
    assert isinstance(backend, I.OrtBackend) and fake.built == 1
    assert any("cannot write the engine" in ln for ln in lines), lines


def test_a_normals_model_writes_normal_maps_npy_and_the_strip(normals_export, tmp_path, capsys):
    normals_model, ckpt, graph, _ = normals_export  # a normals checkpoint and its all-scales graph (tests/conftest.py)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    for backend, model in (("torch", ckpt), ("ort", graph)):  # ONNX Runtime on the graph test_export checks
        code, text = run_main([str(tmp_path / "a.png"), "--checkpoint", str(model), "--backend", backend, "--npy",
                               "--scales", "--out", str(out), "--overwrite"], capsys)
        assert code == 0, text
        assert ("onnxruntime" in text) == (backend == "ort")
        assert sorted(p.name for p in out.iterdir()) == ["a_normals.npy", "a_normals.png", "a_scales.png"]
        n = np.load(out / "a_normals.npy")
        assert n.shape == (40, 70, 3) and np.allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-5)
        rgb = np.asarray(Image.open(out / "a_normals.png"))
        assert rgb.shape == (40, 70, 3) and np.abs(rgb.astype(float) - (n + 1) / 2 * 255).max() <= 0.51
    K = len(normals_model.cfg.patch_nums)
    assert np.asarray(Image.open(out / "a_scales.png")).shape[1] > K * 70  # a panel per scale, side by side
    code, text = run_main([str(tmp_path / "a.png"), "--checkpoint", str(ckpt), "--target", "depth", "--backend", "torch",
                           "--out", str(out)], capsys)
    assert code == 2 and "predicts normals" in text
    assert I.load(ckpt, backend="torch").predict(tmp_path / "a.png").shape == (40, 70, 3)
