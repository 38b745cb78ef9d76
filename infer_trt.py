"""Depth maps for your images, on the fastest backend this machine has.

    python infer_trt.py photo.jpg
    python infer_trt.py photos/ "more/*.png" --out depth_out --scales --ply --fov 60
    python infer_trt.py photo.jpg --checkpoint runs/x/best.safetensors --backend ort

The model comes from `--checkpoint` (default weights/depthart_tiny.safetensors): one of our safetensors
checkpoints, the DepthART release's model.safetensors, an exported .onnx graph, or a TensorRT .engine.
Decoding is greedy; `--sampling release --seed N` runs the release's sampler in PyTorch instead. For a checkpoint, the static ONNX graph is
exported once and cached (--cache-dir, default ~/.cache/depthart, keyed by the checkpoint's hash, the
batch size, the options and the export code), and the backend is the best one present:

    TensorRT engine (built once from the cached graph; needs TensorRT and a CUDA GPU)
    ONNX Runtime with the TensorRT, CUDA or CPU provider (the providers that actually run are read back)
    PyTorch

`--backend trt|ort|torch` forces one. Every image is read with EXIF orientation applied (grayscale, RGBA,
16-bit and CMYK files become RGB), resized to the model's square input, and the depth is resized back to
the image's own size. Per image, into --out (default depth_out/):

    NAME_depth.png        16-bit PNG: relative depth in [0, 1] times 65535 (0 = nearest possible)
    NAME_depth_color.png  the same depth through a matplotlib colormap (--cmap)
    NAME_depth.npy        --npy: float32 (H, W) relative depth
    NAME.ply              --ply: coloured point cloud, pinhole camera with horizontal --fov, z = relative depth
    NAME_scales.png       --scales: the depth after every scale of the autoregressive refinement, coarse to fine

A bad input (missing, empty, truncated, not an image, a decompression bomb) costs one line and never stops
the run; the run ends with a summary and exits 1 if anything failed. Files are written atomically and
existing outputs are kept unless --overwrite.

`load_backend(path)` gives evaluate.py the same backends: an object with .predict(images) for float32
(B, 3, S, S) arrays in [0, 1] at the model size -> (B, 1, S, S), and .image_size.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from matplotlib import colormaps  # the colormap registry only: no pyplot, no GUI backend
from PIL import Image
from tqdm import tqdm

import depthart as D
import export as E
from data import read_image, resize

DEFAULT_CHECKPOINT = Path("weights/depthart_tiny.safetensors")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".jfif"}
BACKENDS = ("auto", "trt", "ort", "torch")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "depthart"


# ----------------------------------------------------------------------------------------------
# Backends: one interface, predict (B,3,S,S) [0,1] -> (B,1,S,S), any B
# ----------------------------------------------------------------------------------------------
class Backend:
    """Runs a fixed-batch model on any number of images: splits into chunks and pads the last one."""

    name = "?"
    image_size: int
    batch: int | None = None  # fixed batch of a graph or engine; None: any
    has_scales: bool = False   # whether run() also returns depth_scales

    def _run(self, images: np.ndarray) -> dict:
        raise NotImplementedError

    def run(self, images) -> dict:
        """float32 (B,3,S,S) in [0,1] -> {'depth': (B,1,S,S)[, 'depth_scales': (B,K,S,S)]} float32."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        S = self.image_size
        if images.ndim != 4 or images.shape[1:] != (3, S, S):
            raise ValueError(f"expected images (B, 3, {S}, {S}) in [0, 1], got {images.shape}")
        step = self.batch or max(len(images), 1)
        parts = []
        for i in range(0, len(images), step):
            chunk = images[i:i + step]
            n = len(chunk)
            if self.batch and n < self.batch:  # pad with copies of the first image, then drop them
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], self.batch - n, 0)])
            out = self._run(chunk)
            parts.append({k: np.asarray(v, dtype=np.float32)[:n] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else \
            {"depth": np.zeros((0, 1, S, S), np.float32)}

    def predict(self, images) -> np.ndarray:
        return self.run(images)["depth"]

    __call__ = predict


class TorchBackend(Backend):
    """PyTorch eager. sampling="release" runs the release's sampler, its draws from one generator seeded with
    `seed` (None: torch's global generator, unseeded, as the release); images are drawn for in input order."""

    def __init__(self, model, all_scales: bool = False, sampling: str = "greedy", seed: int | None = None):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.eval().to(self.device)
        self.image_size, self.has_scales, self.sampling = model.cfg.image_size, all_scales, sampling
        self.generator = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        how = "greedy" if sampling == "greedy" else f"release sampler, seed {seed}"
        self.name = f"torch ({self.device}, eager, cached rollout, {how})"

    def _run(self, images):
        x = torch.from_numpy(images).to(self.device)
        with torch.no_grad():
            scales = self.model.predict(x, all_scales=self.has_scales, sampling=self.sampling,
                                        generator=self.generator).cpu().numpy()
            if not self.has_scales:
                return {"depth": scales}
            return {"depth": scales[:, -1:], "depth_scales": scales}


def _cuda_present() -> bool:
    return torch.cuda.is_available() or Path("/dev/nvidia0").exists()


class OrtBackend(Backend):
    def __init__(self, onnx_path, cache_dir=None, providers=None, log=print):
        available = ort.get_available_providers()
        if providers is None:  # GPU providers only where a GPU is: asking for them elsewhere only logs errors
            wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if _cuda_present() else []
            providers = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
        options = []
        for p in providers:
            if p == "TensorrtExecutionProvider" and cache_dir:
                options.append({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
                                "trt_timing_cache_enable": True})
            else:
                options.append({})
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), so, providers=providers, provider_options=options)
        self.providers = self.session.get_providers()  # what actually runs, not what was asked for
        shape = self.session.get_inputs()[0].shape
        self.batch, self.image_size = int(shape[0]), int(shape[2])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.has_scales = "depth_scales" in self.outputs
        self.name = f"onnxruntime {ort.__version__} ({', '.join(self.providers)}) on {Path(onnx_path).name}"

    def _run(self, images):
        values = self.session.run(None, {"image": images})
        return {k: v for k, v in zip(self.outputs, values) if k in ("depth", "depth_scales")}


class TrtBackend(Backend):
    """A serialized TensorRT engine, run with the TensorRT 10/11 API on buffers torch allocates."""

    def __init__(self, engine_path, log=print):
        trt = E.import_tensorrt()  # optional: TensorRT is imported only here, where an engine is run
        if not torch.cuda.is_available():
            raise E.EngineUnavailable("TensorRT engines need a CUDA GPU and a CUDA build of torch")
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{engine_path}: TensorRT {trt.__version__} cannot load this engine; it was built by "
                               f"another TensorRT version or GPU: rebuild it from the .onnx (export.py --engine)")
        self.context = self.engine.create_execution_context()
        self.buffers, self.outputs = {}, []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            buf = torch.empty(tuple(self.engine.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, buf.data_ptr())
            self.buffers[name] = buf
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                self.outputs.append(name)
        self.stream = torch.cuda.Stream()
        shape = self.buffers["image"].shape
        self.batch, self.image_size = int(shape[0]), int(shape[2])
        self.has_scales = "depth_scales" in self.outputs
        self.name = f"TensorRT {trt.__version__} engine {Path(engine_path).name}"

    def _run(self, images):
        with torch.cuda.stream(self.stream):
            self.buffers["image"].copy_(torch.from_numpy(images), non_blocking=False)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            out = {k: self.buffers[k].float().cpu().numpy() for k in self.outputs if k in ("depth", "depth_scales")}
        self.stream.synchronize()
        return out


# ----------------------------------------------------------------------------------------------
# Picking and building a backend
# ----------------------------------------------------------------------------------------------
def _code_digest() -> str:
    """Hash of the code that decides what an exported graph computes: a change invalidates the cache."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in ("depthart.py", "export.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:10]


def cached_graph(checkpoint, batch: int = 1, all_scales: bool = False, fp16: bool = False,
                 cache_dir=None, log=print) -> Path:
    """The exported graph of a checkpoint, exported (and checked against PyTorch) on first use."""
    checkpoint = Path(checkpoint)
    digest = E.file_sha256(checkpoint)[:16]
    opts = f"b{batch}" + ("-scales" if all_scales else "") + ("-fp16" if fp16 else "")
    path = Path(cache_dir or default_cache_dir()) / digest / f"depthart-{opts}-opset{E.OPSET}-{_code_digest()}.onnx"
    if path.exists():
        return path
    log(f"exporting {checkpoint} to {path} (once; later runs reuse it)")
    model = D.DepthART.from_checkpoint(checkpoint)
    E.export(model, path, batch=batch, all_scales=all_scales, fp16=fp16, check=True, exact=False,
             log=lambda s: log("  " + s))
    return path


def load_backend(path=DEFAULT_CHECKPOINT, backend: str = "auto", batch: int = 1, all_scales: bool = False,
                 fp16: bool = False, cache_dir=None, log=print, sampling: str = "greedy", seed: int | None = None) -> Backend:
    """A Backend for a checkpoint (.safetensors: ours or the DepthART release's model.safetensors), an ONNX
    graph (.onnx) or a TensorRT engine (.engine).

    backend: auto (TensorRT, then ONNX Runtime, then PyTorch), or trt / ort / torch to force one.
    batch, all_scales and fp16 choose the exported graph of a checkpoint; a given .onnx or .engine
    brings its own. Graphs and engines decode greedily; sampling="release" (the release's sampler, seeded
    with `seed`) runs in PyTorch. Returns an object with .predict(images (B,3,S,S) float32 [0,1]) ->
    (B,1,S,S) and .image_size.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if sampling not in ("greedy", "release"):
        raise ValueError(f"unknown sampling {sampling!r}; choose greedy or release")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if sampling == "release":
        if backend not in ("auto", "torch") or suffix in (".onnx", ".engine", ".plan", ".trt"):
            raise ValueError("--sampling release runs in PyTorch only (exported graphs decode greedily): "
                             "pass a .safetensors checkpoint and --backend auto or torch")
        return TorchBackend(D.DepthART.from_checkpoint(path), all_scales, sampling, seed)
    if suffix in (".engine", ".plan", ".trt"):
        if backend not in ("auto", "trt"):
            raise ValueError(f"{path} is a TensorRT engine: only the trt backend runs it")
        return TrtBackend(path, log=log)
    if suffix == ".onnx":
        if backend == "torch":
            raise ValueError(f"{path} is an ONNX graph: the torch backend needs a checkpoint")
        if backend in ("auto", "trt"):
            try:
                return TrtBackend(E.build_engine(path, cache_dir or path.parent, log=log), log=log)
            except (E.EngineUnavailable, RuntimeError) as e:
                if backend == "trt":
                    raise
                log(f"TensorRT unavailable ({e}); using ONNX Runtime")
        return OrtBackend(path, cache_dir=cache_dir, log=log)

    if backend == "torch":
        return TorchBackend(D.DepthART.from_checkpoint(path), all_scales)
    reasons = []
    if backend in ("auto", "trt"):
        try:
            E.import_tensorrt(), E.gpu_description()
            graph = cached_graph(path, batch, all_scales, fp16, cache_dir, log)
            return TrtBackend(E.build_engine(graph, graph.parent, log=log), log=log)
        except (E.EngineUnavailable, RuntimeError) as e:  # missing, or present but failing: say why, go on
            if backend == "trt":
                raise
            reasons.append(f"TensorRT unavailable: {e}")
    for reason in reasons:
        log(reason)
    graph = cached_graph(path, batch, all_scales, fp16, cache_dir, log)
    return OrtBackend(graph, cache_dir=graph.parent, log=log)


# ----------------------------------------------------------------------------------------------
# Images in
# ----------------------------------------------------------------------------------------------
def collect_inputs(items) -> tuple[list[Path], list[str]]:
    """Files, folders (their image files, not recursive) and globs -> (paths, problems)."""
    paths, problems = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
            if len(images) < len(files):
                print(f"{item}: ignoring {len(files) - len(images)} files without an image extension")
            if not images:
                problems.append(f"{item}: folder holds no image files")
            paths += images
        elif p.exists():
            paths.append(p)
        elif any(c in item for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                problems.append(f"{item}: no file matches")
            paths += matches
        else:
            problems.append(f"{item}: no such file or folder")
    seen, unique = set(), []
    for p in paths:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique, problems


def output_stems(paths) -> list[str]:
    """One output name per input; inputs sharing a file stem get their extension, then a number, appended."""
    stems, used = [], set()
    for p in paths:
        stem = p.stem
        if stem in used:
            stem = f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        n = 2
        base = stem
        while stem in used:
            stem, n = f"{base}_{n}", n + 1
        used.add(stem)
        stems.append(stem)
    return stems


# ----------------------------------------------------------------------------------------------
# Results out, atomically
# ----------------------------------------------------------------------------------------------
def depth_to_uint16(depth_hw: np.ndarray) -> np.ndarray:
    return np.round(np.clip(depth_hw, 0, 1) * 65535).astype(np.uint16)


def save_png16(path: Path, depth_hw: np.ndarray):
    D.atomic_write(path, lambda tmp: Image.fromarray(depth_to_uint16(depth_hw)).save(tmp, format="PNG"))


def colorize(depth_hw: np.ndarray, cmap: str, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Relative depth -> uint8 RGB through a matplotlib colormap, stretched over [lo, hi] (default min..max)."""
    lo = float(depth_hw.min()) if lo is None else lo
    hi = float(depth_hw.max()) if hi is None else hi
    x = (depth_hw - lo) / max(hi - lo, 1e-8)
    return (colormaps[cmap](np.clip(x, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def save_rgb(path: Path, rgb: np.ndarray):
    D.atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def save_npy(path: Path, depth_hw: np.ndarray):
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, depth_hw.astype(np.float32))
    D.atomic_write(path, write)


def save_ply(path: Path, depth_hw: np.ndarray, image_hw3: np.ndarray, fov_deg: float, max_points: int = 1 << 20):
    """Binary PLY point cloud: pinhole camera with horizontal field of view fov_deg at the image centre,
    z = relative depth (so the cloud's scale is relative too), colours from the image. Large images are
    subsampled on a regular grid to at most max_points points."""
    H, W = depth_hw.shape
    step = max(1, math.ceil(math.sqrt(H * W / max_points)))
    v, u = np.mgrid[0:H:step, 0:W:step]
    z = depth_hw[::step, ::step]
    f = W / (2 * math.tan(math.radians(fov_deg) / 2))
    x = (u + 0.5 - W / 2) / f * z
    y = -(v + 0.5 - H / 2) / f * z  # y up
    rgb = (np.clip(image_hw3[::step, ::step], 0, 1) * 255).round().astype(np.uint8)
    keep = z > 0
    vertex = np.empty(int(keep.sum()), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                              ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = x[keep], y[keep], -z[keep]  # camera looks down -z
    vertex["red"], vertex["green"], vertex["blue"] = rgb[keep][:, 0], rgb[keep][:, 1], rgb[keep][:, 2]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"comment DepthART relative depth, horizontal fov {fov_deg} deg\n"
              f"element vertex {len(vertex)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(header.encode("ascii"))
            fh.write(vertex.tobytes())
    D.atomic_write(path, write)


def scales_strip(scales_khw: np.ndarray, H: int, W: int, cmap: str, panel_height: int = 256) -> np.ndarray:
    """The depth after every scale, side by side with the image's aspect ratio, at one shared colour
    scale (the final depth's range)."""
    K = len(scales_khw)
    ph = min(panel_height, H)
    pw = max(1, round(W * ph / H))
    panels = resize(scales_khw, ph, pw)
    final = scales_khw[-1]
    lo, hi = float(final.min()), float(final.max())
    gap = np.full((ph, 2, 3), 255, np.uint8)
    parts = []
    for k in range(K):
        parts += [colorize(panels[k], cmap, lo, hi)] + ([gap] if k < K - 1 else [])
    return np.concatenate(parts, 1)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def planned_outputs(out_dir: Path, stem: str, args) -> dict:
    outs = {"depth16": out_dir / f"{stem}_depth.png", "color": out_dir / f"{stem}_depth_color.png"}
    if args.npy:
        outs["npy"] = out_dir / f"{stem}_depth.npy"
    if args.ply:
        outs["ply"] = out_dir / f"{stem}.ply"
    if args.scales:
        outs["scales"] = out_dir / f"{stem}_scales.png"
    return outs


def write_outputs(todo: dict, image_hw3: np.ndarray, depth_SS: np.ndarray, scales_KSS, args):
    H, W = image_hw3.shape[:2]
    depth = resize(depth_SS, H, W)
    for kind, path in todo.items():
        if kind == "depth16":
            save_png16(path, depth)
        elif kind == "color":
            save_rgb(path, colorize(depth, args.cmap))
        elif kind == "npy":
            save_npy(path, depth)
        elif kind == "ply":
            save_ply(path, depth, image_hw3, args.fov)
        elif kind == "scales":
            save_rgb(path, scales_strip(scales_KSS, H, W, args.cmap))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("inputs", nargs="+", help="image files, folders (their images) or glob patterns")
    p.add_argument("--sampling", choices=["greedy", "release"], default="greedy",
                   help="greedy (default; deterministic; every backend) or the DepthART release's sampler (PyTorch)")
    p.add_argument("--seed", type=int, default=None, help="--sampling release: seed of its draws (default unseeded)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help=f"checkpoint (.safetensors), graph (.onnx) or TensorRT engine (.engine); default {DEFAULT_CHECKPOINT}")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="force a backend (default: the best present)")
    p.add_argument("--out", default="depth_out", help="output folder (default depth_out/)")
    p.add_argument("--batch", type=int, default=1, help="images per model call (graphs are exported per batch size)")
    p.add_argument("--fp16", action="store_true", help="use the FP16 graph (for TensorRT / CUDA; slower on the CPU)")
    p.add_argument("--cache-dir", help=f"where exported graphs and engines are cached (default {default_cache_dir()})")
    p.add_argument("--npy", action="store_true", help="also write the float32 depth as .npy")
    p.add_argument("--ply", action="store_true", help="also write a coloured point cloud (.ply)")
    p.add_argument("--fov", type=float, default=60.0, help="horizontal field of view for --ply, degrees (default 60)")
    p.add_argument("--scales", action="store_true", help="also write a strip of the depth after every scale")
    p.add_argument("--cmap", default="inferno_r", help="matplotlib colormap for the colour PNG (default inferno_r: near is bright)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    paths, failures = collect_inputs(args.inputs)
    for problem in failures:
        print(problem)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        hint = (" (the default; it ships with a release: until then pass --checkpoint PATH to a .safetensors "
                "checkpoint from train.py, an .onnx graph from export.py or a TensorRT .engine)"
                if args.checkpoint == str(DEFAULT_CHECKPOINT) else "")
        print(f"no checkpoint at {checkpoint}{hint}")
        return 2
    t0 = time.perf_counter()
    try:
        backend = load_backend(checkpoint, args.backend, args.batch, all_scales=args.scales, fp16=args.fp16,
                               cache_dir=args.cache_dir, sampling=args.sampling, seed=args.seed)
    except (ImportError, OSError, ValueError, RuntimeError) as e:  # EngineUnavailable is a RuntimeError
        print(f"cannot run {checkpoint} on backend {args.backend}: {type(e).__name__}: {e}")
        return 2
    if args.scales and not backend.has_scales:
        print(f"--scales needs a depth_scales output, which {checkpoint} lacks: export it with --all-scales, "
              f"or pass the checkpoint")
        return 2
    print(f"backend: {backend.name} (ready in {time.perf_counter() - t0:.1f} s)")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    S = backend.image_size
    written = skipped_files = skipped_images = 0
    pending = []  # (path, image, todo)

    def flush():
        nonlocal written
        if not pending:
            return
        batch = np.stack([resize(img.transpose(2, 0, 1), S, S) for _, img, _ in pending])
        out = backend.run(np.clip(batch, 0, 1))
        for i, (path, img, todo) in enumerate(pending):
            try:
                write_outputs(todo, img, out["depth"][i, 0], out["depth_scales"][i] if args.scales else None, args)
                written += 1
            except OSError as e:
                failures.append(f"{path}: cannot write outputs ({e})")
                tqdm.write(failures[-1])
        pending.clear()

    with tqdm(total=len(paths), unit="img", disable=len(paths) < 2 or None, dynamic_ncols=True) as bar:
        for path, stem in zip(paths, output_stems(paths)):
            outs = planned_outputs(out_dir, stem, args)
            todo = {k: p for k, p in outs.items() if args.overwrite or not p.exists()}
            if len(todo) < len(outs):
                skipped_files += len(outs) - len(todo)
                tqdm.write(f"{path}: keeping existing {', '.join(p.name for k, p in outs.items() if k not in todo)}"
                           + ("" if todo else " (nothing to do; --overwrite replaces them)"))
            if not todo:
                skipped_images += 1
                bar.update(1)
                continue
            try:
                image = read_image(path)
                if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
                    raise ValueError(f"reader returned an array of shape {image.shape}")
            except Exception as e:  # noqa: BLE001 (whatever a bad file raises, it costs one line)
                msg = str(e)  # data.ImageReadError already names the file and the reason
                failures.append(msg if str(path) in msg else f"{path}: cannot read image ({type(e).__name__}: {msg})")
                tqdm.write(failures[-1])
                bar.update(1)
                continue
            pending.append((path, image, todo))
            if len(pending) >= max(args.batch, 1):
                flush()
            bar.update(1)
        flush()
    summary = (f"{written} images written to {out_dir}/, {skipped_images} skipped (outputs exist; --overwrite "
               f"replaces them), {len(failures)} failed" + (f", {skipped_files} existing files kept" if skipped_files else "")
               + f"; backend {backend.name}")
    print(summary)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
