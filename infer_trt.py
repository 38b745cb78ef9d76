"""Depth maps for your images and videos, on the fastest backend this machine has.

    python infer_trt.py photo.jpg
    python infer_trt.py photos/ "more/*.png" --out depth_out --scales --ply --fov 60
    python infer_trt.py photo.jpg --checkpoint runs/x/best.safetensors --backend ort
    python infer_trt.py clip.mp4 --frames                 # a depth video (and 16-bit PNGs per frame)
    python infer_trt.py frames/ --sequence --fps 24       # a folder of frames as one clip

From Python (one import, one call; the best backend present, depth at the image's own size):

    import infer_trt
    model = infer_trt.load()                  # or load("runs/x/last.safetensors"), an .onnx, an .engine
    depth = model.predict("photo.jpg")        # a path, a PIL image or an (H, W, 3) array -> (H, W) float32

A normals model (a checkpoint trained with train.py --target normals, or `--target normals`, whose default is
the shipped weights/depthart_normals_tiny.safetensors) writes surface normals instead, per image:

    NAME_normals.png      RGB = (n + 1) / 2 of unit camera-frame normals (x right, y down, z forward; a
                          surface facing the camera, (0, 0, -1), is (128, 128, 0))
    NAME_normals.npy      --npy: float32 (H, W, 3) unit normals
    NAME_scales.png       --scales: the normals after every scale

The model comes from `--checkpoint` (default weights/depthart_small.safetensors): one of our safetensors
checkpoints, the DepthART release's model.safetensors, an exported .onnx graph, or a TensorRT .engine.
Decoding is greedy; `--sampling release --seed N` runs the release's sampler in PyTorch instead. For a checkpoint, the static ONNX graph is
exported once and cached (--cache-dir, default ~/.cache/depthart, keyed by the checkpoint's hash, the
batch size, the options and the export code), and the backend is the best one present:

    TensorRT engine (built once from the cached graph; needs TensorRT and a CUDA GPU)
    ONNX Runtime with the TensorRT, CUDA or CPU provider (the providers that actually run are read back)
    PyTorch

`--backend trt|ort|torch` forces one. Every image is read with EXIF orientation applied (grayscale, RGBA,
16-bit and CMYK files become RGB) and fitted to the model's square input without distortion (--fit pad:
the long side resized to the square, the rest filled by repeating the border; --fit squash distorts it);
the depth is cropped back and resized to the image's own size. Per image, into --out (default depth_out/):

    NAME_depth.png        16-bit PNG: relative depth in [0, 1] times 65535 (0 = at the camera; scale only,
                          so depth / 65535 is distance up to one unknown factor per image)
    NAME_depth_color.png  the same depth through a matplotlib colormap (--cmap)
    NAME_depth.npy        --npy: float32 (H, W) relative depth
    NAME.ply              --ply: coloured point cloud, pinhole camera with --fx --fy --cx --cy (pixels), else
                          the focal length in the photo's EXIF (35 mm equivalent), else horizontal --fov;
                          z = relative depth
    NAME_scales.png       --scales: the depth after every scale of the autoregressive refinement, coarse to fine
    NAME_uncertainty.png  --samples N: the ensemble's per-pixel uncertainty with a colour legend (and .npy); the
                          depth files then hold the ensemble's median
    NAME_depth_metres.npy --known / --sparse: metric depth fitted to known points, float32 metres; also
                          NAME_depth_mm.png (16-bit millimetres) and NAME_metric.ply (metres)

--max-scale K stops the rollout after K scales (anytime depth, every backend; graphs are exported per K).

A video file (.mp4, .mov, .avi, .mkv, .webm, ...) or, with --sequence, a folder of frames is one clip:
frames stream through the backend (a temporary file in --out holds the small per-frame depth, so memory
stays bounded), each frame's depth is scaled to its predecessor's (the median of their ratio), and
NAME_depth.mp4 is coloured with one range for the whole clip, so it does not flicker; --frames also
writes NAME_depth_frames/NNNNNN.png (16-bit, the clip's aligned depth over its maximum, 0 = at the camera).

A bad input (missing, empty, truncated, not an image, a decompression bomb) costs one line and never stops
the run; the run ends with a summary and exits 1 if anything failed. Files are written atomically and
existing outputs are kept unless --overwrite.

`load_backend(path)` gives evaluate.py the same backends: an object with .predict(images) for float32
(B, 3, S, S) arrays in [0, 1] at the model size -> (B, 1, S, S), and .image_size. `load(path)` wraps
one for images of any size (DepthModel.predict).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import math
import os
import re
import sys
import time
from pathlib import Path

import imageio_ffmpeg  # imageio's ffmpeg plugin (its wheel ships an ffmpeg binary): streams video in and out
import numpy as np
import onnxruntime as ort
import torch
from matplotlib import colormaps  # the colormap registry only: no pyplot, no GUI backend
from PIL import Image, ImageOps
from tqdm import tqdm

import depthart as D
import download as weights
import zoo as Z
import export as E
from data import FITS, atomic_write, exif_focal_px, fit_square, pil_to_rgb, read_image, resize, unfit_square, writable_dir
import metrics as M
from metrics import align_median

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "depthart_small.safetensors"  # any working dir
DEFAULT_NORMALS_CHECKPOINT = DEFAULT_CHECKPOINT.with_name("depthart_normals_tiny.safetensors")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".jfif"}
VIDEO_EXTENSIONS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
BACKENDS = ("auto", "trt", "ort", "torch")
PRECISIONS = ("fp32", "fp16", "int8")


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
    has_scales: bool = False   # whether run() also returns depth_scales (normals_scales)
    target: str = "depth"      # what the model predicts: "depth" (B,1,S,S) or "normals" (B,3,S,S)

    def outputs_of(self, names) -> list[str]:
        """The outputs a backend returns, from a graph's or engine's output names (tokens are never returned)."""
        self.target = "normals" if "normals" in names else "depth"
        self.has_scales = f"{self.target}_scales" in names
        return [n for n in names if n in (self.target, f"{self.target}_scales")]

    def _run(self, images: np.ndarray) -> dict:
        raise NotImplementedError

    def run(self, images) -> dict:
        """float32 (B,3,S,S) in [0,1] -> {'depth': (B,1,S,S)[, 'depth_scales': (B,K,S,S)]} float32, or for a
        normals model {'normals': (B,3,S,S)[, 'normals_scales': (B,K,3,S,S)]}."""
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
            {self.target: np.zeros((0, 3 if self.target == "normals" else 1, S, S), np.float32)}

    def predict(self, images) -> np.ndarray:
        return self.run(images)[self.target]

    __call__ = predict


class TorchBackend(Backend):
    """PyTorch eager. sampling="release" runs the release's sampler ("temperature": zoo.temperature_sampler), its
    draws from one generator seeded with `seed` (None: torch's global generator, unseeded, as the release); images
    are drawn for in input order. samples N > 1 (a sampler only): N sampled rollouts per image, aligned to each
    other and reduced by metrics.ensemble to their median, with an `uncertainty` output (B, 1, S, S): the aligned
    samples' per-pixel standard deviation, in the depth's relative units."""

    def __init__(self, model, all_scales: bool = False, sampling: str = "greedy", seed: int | None = None,
                 max_scale: int | None = None, samples: int = 1):
        if samples < 1 or (samples > 1 and sampling == "greedy"):
            raise ValueError(f"--samples {samples}: an ensemble needs N >= 1 sampled rollouts and a sampler "
                             f"(--sampling release or temperature); greedy rollouts are all alike")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.eval().to(self.device)
        self.image_size, self.has_scales, self.target = model.cfg.image_size, all_scales, model.cfg.target
        self.sampling, self.max_scale = sampling, check_max_scale(max_scale, model.cfg)
        self.pick = Z.sampler(sampling, None if seed is None else torch.Generator(self.device).manual_seed(seed))
        how = "greedy" if sampling == "greedy" else f"{sampling} sampler, seed {seed}"
        stop = "" if self.max_scale is None else f", first {self.max_scale} of {len(model.cfg.patch_nums)} scales"
        # the ensemble aligns its samples in depth: affine for q98_shift, by scale otherwise (disparity included)
        self.samples, self.mode = samples, "affine" if Z.alignment(model.cfg) == "affine" else "scale"
        ens = f", ensemble of {samples}" if samples > 1 else ""
        self.name = f"torch ({self.device}, eager, cached rollout, {how}{stop}{ens})"

    def sample(self, images) -> np.ndarray:
        """float32 (B, 3, S, S) -> N sampled depth maps per image (B, N, [K,] S, S), drawn image by image."""
        out = []
        with torch.no_grad():
            for image in torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device):
                x = image[None].expand(self.samples, -1, -1, -1)
                y = Z.anytime_predict(self.model, x, self.max_scale, self.has_scales, self.pick)
                out.append((y if self.has_scales else y[:, 0]).cpu().numpy())
        return np.stack(out)

    def _run(self, images):
        if self.samples > 1:
            if self.target != "depth":
                raise ValueError("--samples: ensembles are of depth; this model predicts normals")
            raw = self.sample(images)  # (B, N, [K,] S, S)
            last = raw[:, :, -1] if self.has_scales else raw
            depth, unc = zip(*(M.ensemble(r, self.mode) for r in last))
            out = {"depth": np.stack(depth)[:, None], "uncertainty": np.stack(unc)[:, None]}
            if self.has_scales:
                out["depth_scales"] = np.stack([[M.ensemble(r[:, k], self.mode)[0] for k in range(r.shape[1])]
                                                for r in raw])
            return out
        x = torch.from_numpy(images).to(self.device)
        with torch.no_grad():
            scales = Z.anytime_predict(self.model, x, self.max_scale, self.has_scales, self.pick).cpu().numpy()
            if not self.has_scales:
                return {self.target: scales}
            return {self.target: Z.last_scale(torch.from_numpy(scales)).numpy(), f"{self.target}_scales": scales}


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
        self.returned = self.outputs_of(self.outputs)
        self.name = f"onnxruntime {ort.__version__} ({', '.join(self.providers)}) on {Path(onnx_path).name}"

    def _run(self, images):
        values = self.session.run(None, {"image": images})
        return {k: v for k, v in zip(self.outputs, values) if k in self.returned}


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
        self.returned = self.outputs_of(self.outputs)
        self.name = f"TensorRT {trt.__version__} engine {Path(engine_path).name}"

    def _run(self, images):
        with torch.cuda.stream(self.stream):
            self.buffers["image"].copy_(torch.from_numpy(images), non_blocking=False)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            out = {k: self.buffers[k].float().cpu().numpy() for k in self.returned}
        self.stream.synchronize()
        return out


# ----------------------------------------------------------------------------------------------
# Picking and building a backend
# ----------------------------------------------------------------------------------------------
def _code_digest() -> str:
    """Hash of the code that decides what an exported graph computes: a change invalidates the cache."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in ("depthart.py", "zoo.py", "export.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:10]


def check_max_scale(max_scale: int | None, cfg: D.Config | None) -> int | None:
    """--max-scale k for a model of K scales -> k, or None for all K (k = K is the full graph); one-line errors."""
    if max_scale is None:
        return None
    K = len(cfg.patch_nums) if cfg is not None else None
    if not max_scale >= 1 or (K is not None and max_scale > K):
        raise ValueError(f"--max-scale {max_scale}: this model has scales 1..{K}" if K else
                         f"--max-scale {max_scale}: must be at least 1")
    return None if max_scale == K else int(max_scale)


def cached_graph(checkpoint, batch: int = 1, all_scales: bool = False, precision: str = "fp32",
                 cache_dir=None, log=print, max_scale: int | None = None) -> Path:
    """The exported graph of a checkpoint (precision fp32, fp16 or int8: export.py's --fp16, --int8), exported
    (and checked against PyTorch) on first use; max_scale k: the anytime graph that stops after k scales (one
    graph, cached, per k)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    checkpoint = Path(checkpoint)
    digest = E.file_sha256(checkpoint)[:16]
    opts = f"b{batch}" + ("-scales" if all_scales else "") + ("" if precision == "fp32" else f"-{precision}") + \
        (f"-k{max_scale}" if max_scale else "")
    path = Path(cache_dir or default_cache_dir()) / digest / f"depthart-{opts}-opset{E.OPSET}-{_code_digest()}.onnx"
    if path.exists():
        return path
    log(f"exporting {checkpoint} to {path} (once; later runs reuse it)")
    model = Z.load(checkpoint)
    E.export(model, path, batch=batch, all_scales=all_scales, fp16=precision == "fp16", int8=precision == "int8",
             check=True, exact=False, log=lambda s: log("  " + s), max_scale=max_scale, keep_model=False)
    prune_stale_graphs(path, log)
    return path


def prune_stale_graphs(path: Path, log=print) -> list[Path]:
    """Remove the graphs that earlier code exported for the same checkpoint and options (same name but for the
    opset and code digest), with their external data: an upgrade would otherwise leave each behind for good (the
    release's FP32 graph is 1.6 GB). Engines are keyed by graph content and left alone. -> the files removed."""
    prefix = path.name[:path.name.rindex("-opset")]  # depthart-{options}
    stale = re.compile(re.escape(prefix) + r"-opset\d+-[0-9a-f]{10}\.onnx")
    removed = []
    for old in sorted(path.parent.glob(prefix + "-opset*.onnx")):
        if old.name != path.name and stale.fullmatch(old.name):
            for f in E.graph_files(old):
                f.unlink(missing_ok=True)
                removed.append(f)
    if removed:
        log(f"removed {len(removed)} file(s) of graphs that earlier code exported for this checkpoint")
    return removed


def load_backend(path=DEFAULT_CHECKPOINT, backend: str = "auto", batch: int = 1, all_scales: bool = False,
                 precision: str = "fp32", cache_dir=None, log=print, sampling: str = "greedy",
                 seed: int | None = None, max_scale: int | None = None, samples: int = 1) -> Backend:
    """A Backend for a checkpoint (.safetensors: ours or the DepthART release's model.safetensors), an ONNX
    graph (.onnx) or a TensorRT engine (.engine).

    backend: auto (TensorRT, then ONNX Runtime, then PyTorch), or trt / ort / torch to force one.
    batch, all_scales and precision (fp32; fp16, the FP16 graph with FP32 islands, for TensorRT and CUDA; int8,
    for ONNX Runtime on the CPU: TensorRT is skipped) choose the exported graph of a checkpoint; a given .onnx
    or .engine brings its own. Graphs and engines decode greedily; sampling="release" (the release's sampler, seeded
    with `seed`) runs in PyTorch. Returns an object with .predict(images (B,3,S,S) float32 [0,1]) ->
    (B,1,S,S) and .image_size. samples N > 1: an ensemble of N sampled rollouts (PyTorch; the release's
    sampler unless `sampling` names another; outputs also `uncertainty`, see TorchBackend). max_scale k (anytime depth): stop after the first k scales (a checkpoint's
    graph is exported per k; a given .onnx or .engine has its own scale count, so max_scale is refused there).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if sampling not in Z.SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; choose one of {', '.join(Z.SAMPLINGS)}")
    if samples > 1 and sampling == "greedy":
        sampling = "release"  # an ensemble needs a sampler: the release's, unless another is named
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    E.refuse_stage1(path)
    suffix = path.suffix.lower()
    graph_file = suffix in (".onnx", ".engine", ".plan", ".trt")
    if max_scale is not None and graph_file:
        raise ValueError(f"--max-scale: {path} is an exported graph with its scale count fixed; pass the checkpoint, "
                         f"or export a graph per k with export.py --max-scale K")
    if max_scale is not None:
        max_scale = check_max_scale(max_scale, Z.checkpoint_config(path))
    if sampling != "greedy":
        if backend not in ("auto", "torch") or graph_file:
            raise ValueError(f"--sampling {sampling}" + (f" (--samples {samples})" if samples > 1 else "") +
                             " runs in PyTorch only (exported graphs decode greedily): "
                             "pass a .safetensors checkpoint and --backend auto or torch")
        return TorchBackend(Z.load(path), all_scales, sampling, seed, max_scale, samples)
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
            except (RuntimeError, OSError) as e:  # EngineUnavailable (no TensorRT, GPU, or writable folder)
                if backend == "trt":
                    raise
                log(f"TensorRT unavailable ({e}); using ONNX Runtime")
        return OrtBackend(path, cache_dir=cache_dir, log=log)

    if precision == "auto":  # README, FP16 and INT8 graphs: INT8 changed AbsRel by under 1% and runs faster on CPUs
        precision = "int8" if backend in ("auto", "ort") and not _cuda_present() else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of auto, {', '.join(PRECISIONS)}")
    if backend == "torch":
        if precision != "fp32":
            raise ValueError(f"--precision {precision} is an exported graph's: the torch backend runs FP32")
        return TorchBackend(Z.load(path), all_scales, max_scale=max_scale)
    if precision == "int8" and backend == "trt":
        raise ValueError("--precision int8 is an ONNX Runtime CPU graph: use --backend ort or auto")
    reasons = []
    if backend in ("auto", "trt") and precision != "int8":
        try:
            E.import_tensorrt(), E.gpu_description()
            graph = cached_graph(path, batch, all_scales, precision, cache_dir, log, max_scale)
            return TrtBackend(E.build_engine(graph, graph.parent, log=log), log=log)
        except (RuntimeError, OSError) as e:  # missing, present but failing, or unwritable: say why, go on
            if backend == "trt":
                raise
            reasons.append(f"TensorRT unavailable: {e}")
    for reason in reasons:
        log(reason)
    graph = cached_graph(path, batch, all_scales, precision, cache_dir, log, max_scale)
    return OrtBackend(graph, cache_dir=graph.parent, log=log)


# ----------------------------------------------------------------------------------------------
# Images of any size through the square model, and the Python API
# ----------------------------------------------------------------------------------------------
def unit_channels_last(n_3HW: np.ndarray) -> np.ndarray:
    """Normals (..., 3, H, W), resized (so no longer unit) -> unit normals (..., H, W, 3)."""
    n = np.moveaxis(n_3HW, -3, -1)
    return (n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)).astype(np.float32)


def predict_arrays(backend: Backend, images: list, fit: str = "pad", scales: bool = False,
                   with_uncertainty: bool = False) -> list:
    """RGB arrays (H, W, 3) in [0, 1] of any sizes -> per image (depth (H, W) float32 at the image's size,
    the depth after every scale (K, h, w) on the image's part of the model square, or None). A normals
    model gives unit normals (H, W, 3) and (K, h, w, 3) instead (resized, then renormalized).
    with_uncertainty: triples, the third an ensemble's uncertainty (H, W) (None from a backend without one)."""
    S, t = backend.image_size, backend.target
    fitted = [fit_square(np.asarray(img, np.float32).transpose(2, 0, 1), S, fit) for img in images]
    out = backend.run(np.clip(np.stack([x for x, _ in fitted]), 0, 1))
    results = []
    for i, (img, (_, box)) in enumerate(zip(images, fitted)):
        y = unfit_square(out[t][i, 0] if t == "depth" else out[t][i], box, *img.shape[:2])
        ys = unfit_square(out[f"{t}_scales"][i], box, box[2], box[3]) if scales else None
        if t == "normals":
            y, ys = unit_channels_last(y), None if ys is None else unit_channels_last(ys)
        if with_uncertainty:
            u = out.get("uncertainty")
            results.append((y, ys, None if u is None else unfit_square(u[i, 0], box, *img.shape[:2])))
        else:
            results.append((y, ys))
    return results


def as_rgb(image) -> np.ndarray:
    """A path, a PIL image or an array ((H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16 or float
    in [0, 1]) -> float32 (H, W, 3) in [0, 1]. Paths go through data.read_image (EXIF orientation applied)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return pil_to_rgb(ImageOps.exif_transpose(image))
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 1:
        raise ValueError(f"expected an image (H, W, 3) array, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535
    return np.clip(np.nan_to_num(a.astype(np.float32)), 0, 1)


class DepthModel:
    """A model for images of any size: `depth = model.predict(image)` (see load)."""

    def __init__(self, backend: Backend, fit: str = "pad"):
        if fit not in FITS:
            raise ValueError(f"unknown fit {fit!r}; choose one of {', '.join(FITS)}")
        self.backend, self.fit = backend, fit

    def predict(self, image) -> np.ndarray:
        """A path, PIL image or (H, W, 3) array of any size -> relative depth (H, W) float32 in [0, 1],
        0 = at the camera (scale only: one unknown factor per image); a normals model: unit camera-frame
        normals (H, W, 3) float32 (x right, y down, z forward)."""
        return predict_arrays(self.backend, [as_rgb(image)], self.fit)[0][0]

    __call__ = predict

    def predict_with_uncertainty(self, image) -> tuple[np.ndarray, np.ndarray | None]:
        """As predict -> (depth (H, W), uncertainty (H, W) of an ensemble (load(samples=N)), else None)."""
        depth, _, unc = predict_arrays(self.backend, [as_rgb(image)], self.fit, with_uncertainty=True)[0]
        return depth, unc

    def __repr__(self):
        return f"DepthModel({self.backend.name}, fit={self.fit})"


def load(path=None, backend: str = "auto", fit: str = "pad", cache_dir=None, log=print,
         download: bool = False, precision: str = "auto", max_scale: int | None = None, samples: int = 1,
         sampling: str = "greedy", seed: int | None = None) -> DepthModel:
    """The Python API: `model = infer_trt.load()` then `model.predict(image)`.

    path: a checkpoint (.safetensors), an .onnx graph or a TensorRT .engine, or a name of download.py's
    ("release": the paper's model); default the shipped model. A name not yet downloaded is a
    FileNotFoundError naming the command, unless download=True (then it downloads, with a progress bar).
    backend: auto (the best present: TensorRT, ONNX Runtime, PyTorch) or trt / ort / torch.
    fit: pad (default, keeps the aspect ratio) or squash. precision: auto (INT8 without a GPU, else FP32), fp32,
    fp16 or int8 (the graph's; load_backend). The first call for a checkpoint exports and caches its graph (log
    says so). max_scale k: anytime depth, the rollout stops after k scales. samples N > 1: an ensemble of N
    sampled rollouts (PyTorch; sampling "release" unless "temperature" is named, seed default 0), whose
    uncertainty predict_with_uncertainty returns."""
    path = DEFAULT_CHECKPOINT if path is None else weights.resolve(path, download)
    seed = 0 if samples > 1 and seed is None else seed
    return DepthModel(load_backend(path, backend, precision=precision, cache_dir=cache_dir, log=log,
                                   max_scale=max_scale, samples=samples, sampling=sampling, seed=seed), fit)


# ----------------------------------------------------------------------------------------------
# Inputs: images, videos, folders of frames
# ----------------------------------------------------------------------------------------------
def collect_inputs(items, sequence: bool = False) -> tuple[list[Path], list, list[str]]:
    """Files, folders (their image files, not recursive) and globs -> (images, clips, problems).

    A clip is (name, source): a video file, or with sequence=True a folder's frames (a sorted list of paths)."""
    paths, clips, problems = [], [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
            if len(images) < len(files):
                print(f"{item}: ignoring {len(files) - len(images)} files without an image extension")
            if not images:
                problems.append(f"{item}: folder holds no image files")
            elif sequence:
                clips.append((p.resolve().name, images))
            else:
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
        if p.resolve() in seen:
            continue
        seen.add(p.resolve())
        if p.suffix.lower() in VIDEO_EXTENSIONS:
            clips.append((p.stem, p))
        else:
            unique.append(p)
    return unique, clips, problems


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
    atomic_write(path, lambda tmp: Image.fromarray(depth_to_uint16(depth_hw)).save(tmp, format="PNG"))


def colorize(depth_hw: np.ndarray, cmap: str, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Relative depth -> uint8 RGB through a matplotlib colormap, stretched over [lo, hi] (default min..max)."""
    lo = float(depth_hw.min()) if lo is None else lo
    hi = float(depth_hw.max()) if hi is None else hi
    x = (depth_hw - lo) / max(hi - lo, 1e-8)
    return (colormaps[cmap](np.clip(x, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def save_rgb(path: Path, rgb: np.ndarray):
    atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def save_npy(path: Path, depth_hw: np.ndarray):
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, depth_hw.astype(np.float32))
    atomic_write(path, write)


def intrinsics(args, path, H: int, W: int) -> tuple[float, float, float, float, str]:
    """(fx, fy, cx, cy, where from) in pixels of the H x W image: --fx/--fy/--cx/--cy, else the EXIF focal
    length (35 mm equivalent), else the horizontal --fov; the principal point defaults to the centre."""
    if args.fx or args.fy:
        fx = args.fx or args.fy
        fy, source = args.fy or fx, "--fx/--fy"
    elif path is not None and (f := exif_focal_px(path)):
        fx, fy, source = f, f, "EXIF FocalLengthIn35mmFilm"
    else:
        fx = fy = W / (2 * math.tan(math.radians(args.fov) / 2))
        source = f"horizontal fov {args.fov} deg"
    cx = (W - 1) / 2 if args.cx is None else args.cx
    cy = (H - 1) / 2 if args.cy is None else args.cy
    return fx, fy, cx, cy, source


def save_ply(path: Path, depth_hw: np.ndarray, image_hw3: np.ndarray, K: tuple, max_points: int = 1 << 20,
             what: str = "relative depth"):
    """Binary PLY point cloud: pinhole camera K = (fx, fy, cx, cy, source) in pixels (0-based pixel centres),
    z = relative depth (so the cloud's scale is relative too; metres for metric depth, what="metric depth in
    metres"), colours from the image. Large images are subsampled on a regular grid to at most max_points points."""
    fx, fy, cx, cy, source = K
    H, W = depth_hw.shape
    step = max(1, math.ceil(math.sqrt(H * W / max_points)))
    v, u = np.mgrid[0:H:step, 0:W:step]
    z = depth_hw[::step, ::step]
    x = (u - cx) / fx * z
    y = -(v - cy) / fy * z  # y up
    rgb = (np.clip(image_hw3[::step, ::step], 0, 1) * 255).round().astype(np.uint8)
    keep = z > 0
    vertex = np.empty(int(keep.sum()), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                              ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = x[keep], y[keep], -z[keep]  # camera looks down -z
    vertex["red"], vertex["green"], vertex["blue"] = rgb[keep][:, 0], rgb[keep][:, 1], rgb[keep][:, 2]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"comment DepthART {what}; fx {fx:.3f} fy {fy:.3f} cx {cx:.3f} cy {cy:.3f} ({source})\n"
              f"element vertex {len(vertex)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(header.encode("ascii"))
            fh.write(vertex.tobytes())
    atomic_write(path, write)


def normals_to_rgb(normals_hw3: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) -> uint8 RGB = (n + 1) / 2, the usual normal-map picture."""
    return np.round((np.clip(normals_hw3, -1, 1) + 1) / 2 * 255).astype(np.uint8)


def scales_strip(scales_khw: np.ndarray, H: int, W: int, cmap: str, panel_height: int = 256) -> np.ndarray:
    """The depth after every scale, side by side with the image's aspect ratio, at one shared colour
    scale (the final depth's range); normals (K, h, w, 3) as normal-map pictures."""
    K = len(scales_khw)
    ph = min(panel_height, H)
    pw = max(1, round(W * ph / H))
    normals = scales_khw.ndim == 4
    panels = unit_channels_last(resize(np.moveaxis(scales_khw, -1, -3), ph, pw)) if normals else resize(scales_khw, ph, pw)
    final = scales_khw[-1]
    lo, hi = float(final.min()), float(final.max())
    gap = np.full((ph, 2, 3), 255, np.uint8)
    parts = []
    for k in range(K):
        parts += [normals_to_rgb(panels[k]) if normals else colorize(panels[k], cmap, lo, hi)] + ([gap] if k < K - 1 else [])
    return np.concatenate(parts, 1)


def planned_outputs(out_dir: Path, stem: str, args, target: str = "depth") -> dict:
    if target == "normals":
        outs = {"normals": out_dir / f"{stem}_normals.png"}
        if args.npy:
            outs["npy"] = out_dir / f"{stem}_normals.npy"
        if args.scales:
            outs["scales"] = out_dir / f"{stem}_scales.png"
        return outs
    outs = {"depth16": out_dir / f"{stem}_depth.png", "color": out_dir / f"{stem}_depth_color.png"}
    if args.npy:
        outs["npy"] = out_dir / f"{stem}_depth.npy"
    if args.ply:
        outs["ply"] = out_dir / f"{stem}.ply"
    if args.scales:
        outs["scales"] = out_dir / f"{stem}_scales.png"
    if getattr(args, "samples", 1) > 1:
        outs |= {"unc_png": out_dir / f"{stem}_uncertainty.png", "unc_npy": out_dir / f"{stem}_uncertainty.npy"}
    if args.known or args.sparse:
        outs |= {"metric_npy": out_dir / f"{stem}_depth_metres.npy", "metric_png": out_dir / f"{stem}_depth_mm.png",
                 "metric_ply": out_dir / f"{stem}_metric.ply"}
    return outs


def known_point(text: str) -> tuple[float, float, float]:
    """--known "x,y,metres": a pixel (column x, row y, 0-based, of the input image) and its measured depth."""
    try:
        x, y, m = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected x,y,metres (e.g. 120,80,2.5)") from None
    if not (m > 0 and np.isfinite([x, y, m]).all()):
        raise argparse.ArgumentTypeError(f"{text!r}: the depth must be a positive number of metres")
    return x, y, m


def known_depth(H: int, W: int, points=(), sparse=None) -> tuple[np.ndarray, np.ndarray]:
    """Known points [(x, y, metres)] and/or a sparse metric depth map (H, W; 0 or NaN = unknown) -> (known (H, W)
    metres, mask); one-line ValueErrors for a point outside the image or a map of another size."""
    known = np.zeros((H, W), np.float64)
    if sparse is not None:
        sparse = np.asarray(sparse, np.float64)
        if sparse.shape != (H, W):
            raise ValueError(f"--sparse map is {sparse.shape[1] if sparse.ndim > 1 else '?'}x{sparse.shape[0]} "
                             f"(shape {sparse.shape}), the image {W}x{H}: it must hold one depth per pixel")
        known = np.where(np.isfinite(sparse) & (sparse > 0), sparse, 0.0)
    for x, y, m in points:
        c, r = int(round(x)), int(round(y))
        if not (0 <= c < W and 0 <= r < H):
            raise ValueError(f"--known {x:g},{y:g},{m:g}: pixel outside the {W}x{H} image")
        known[r, c] = m
    return known, known > 0


def fit_mode(checkpoint) -> str:
    """How a model's relative depth meets metric depth: scale only for the paper's d / q98 (and log) targets,
    scale and shift for q98_shift; an .onnx or .engine is taken to have the paper's target."""
    cfg = Z.checkpoint_config(checkpoint) if Path(checkpoint).suffix == ".safetensors" else None
    mode = Z.alignment(cfg) if cfg is not None else "scale"
    if mode == "affine_inverse":
        raise ValueError("--known/--sparse: this model predicts affine inverse depth (depth_norm disparity), "
                         "whose fit to metric points is not implemented")
    return mode


def uncertainty_png(unc_hw: np.ndarray, cmap: str = "magma") -> bytes:
    """The uncertainty map with a colour legend (a matplotlib Figure on the Agg canvas: no GUI) -> PNG bytes."""
    import io
    from matplotlib.figure import Figure
    H, W = unc_hw.shape
    fig = Figure(figsize=(max(3.0, 4.0 * W / H + 1.2), 4.0), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(unc_hw, cmap=cmap, vmin=0, vmax=max(float(np.percentile(unc_hw, 99)), 1e-6))
    ax.set_axis_off()
    ax.set_title("ensemble uncertainty (std of aligned samples)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).set_label("relative depth units (depth in [0, 1])", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def write_outputs(todo: dict, path, image_hw3: np.ndarray, depth: np.ndarray, scales_khw, args, unc=None):
    H, W = image_hw3.shape[:2]
    if {"metric_npy", "metric_png", "metric_ply"} & set(todo):
        sparse = np.load(args.sparse) if args.sparse else None
        known, mask = known_depth(H, W, args.known or (), sparse)
        metric, info = M.fit_known(depth, known, mask, args.fit_mode)
        tqdm.write(f"{path}: metric fit ({args.fit_mode}) on {info['points']} known points, {info['inliers']} within "
                   f"25%: scale {info['scale']:.4g}" + (f", shift {info['shift']:.4g} m" if args.fit_mode == "affine" else ""))
    for kind, out in todo.items():
        if kind == "normals":  # depth holds the unit normals (H, W, 3) of a normals model
            save_rgb(out, normals_to_rgb(depth))
        elif kind == "depth16":
            save_png16(out, depth)
        elif kind == "color":
            save_rgb(out, colorize(depth, args.cmap))
        elif kind == "npy":
            save_npy(out, depth)
        elif kind == "ply":
            save_ply(out, depth, image_hw3, intrinsics(args, path, H, W))
        elif kind == "scales":
            save_rgb(out, scales_strip(scales_khw, H, W, args.cmap))
        elif kind == "metric_npy":
            save_npy(out, metric)
        elif kind == "unc_npy":
            save_npy(out, unc)
        elif kind == "unc_png":
            atomic_write(out, lambda tmp, b=uncertainty_png(unc): Path(tmp).write_bytes(b))
        elif kind == "metric_png":  # 16-bit millimetres, 0 = unknown, clipped at 65.535 m
            atomic_write(out, lambda tmp: Image.fromarray(np.round(np.clip(metric, 0, 65.535) * 1000)
                                                          .astype(np.uint16)).save(tmp, format="PNG"))
        elif kind == "metric_ply":
            save_ply(out, metric, image_hw3, intrinsics(args, path, H, W), what="metric depth in metres")


# ----------------------------------------------------------------------------------------------
# Clips: a video or a folder of frames -> one depth video without flicker
# ----------------------------------------------------------------------------------------------
def clip_frames(source, problems: list):
    """(frames per second or None, iterator of (H, W, 3) float32 frames in [0, 1], frame count estimate).
    A video streams through imageio's ffmpeg reader (a decoding error ends the clip with an exception);
    a frame list goes through read_image one by one, and an unreadable frame costs a line in problems."""
    if isinstance(source, list):
        def read_all():
            for p in source:
                try:
                    yield read_image(p)
                except OSError as e:  # data.ImageReadError names the file and the reason
                    problems.append(str(e))
        return None, read_all(), len(source)
    reader = imageio_ffmpeg.read_frames(str(source), pix_fmt="rgb24")
    meta = next(reader)  # the first item is the stream's metadata
    (w, h), fps = meta["size"], meta.get("fps") or None
    total = round(meta["duration"] * fps) if fps and math.isfinite(meta.get("duration") or math.inf) else None

    def frames():
        try:
            for frame in reader:
                yield np.frombuffer(frame, np.uint8).reshape(h, w, 3).astype(np.float32) / 255
        finally:
            reader.close()
    return fps, frames(), total


def write_video(path: Path, frames, fps: float):
    """Colour frames (H, W, 3) uint8 -> H.264 MP4 (yuv420p, so odd sizes are padded by one pixel), atomically."""
    def write(tmp):
        writer = None
        try:
            for rgb in frames:
                h, w = rgb.shape[:2]
                if writer is None:
                    writer = imageio_ffmpeg.write_frames(
                        str(tmp), (w + w % 2, h + h % 2), fps=fps, codec="libx264", quality=None,
                        pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
                        output_params=["-crf", "16", "-f", "mp4"])
                    writer.send(None)  # start ffmpeg
                writer.send(np.ascontiguousarray(np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")))
        finally:
            if writer is not None:
                writer.close()
    atomic_write(path, write)


def run_clip(backend: Backend, name: str, source, out_dir: Path, args) -> tuple[int, list[str]]:
    """One clip -> NAME_depth.mp4 (and NAME_depth_frames/ with --frames). Returns (frames written, problems).

    Pass 1 streams the frames through the backend, scales each depth map to the previous one (median
    ratio) and appends it, at the model's resolution, to a temporary file in out_dir, tracking the clip's
    depth range; pass 2 resizes, colours with that one range and encodes. Memory holds a frame at a time."""
    video = out_dir / f"{name}_depth.mp4"
    frames_dir = out_dir / f"{name}_depth_frames"
    if not args.overwrite and (video.exists() or (args.frames and frames_dir.exists())):
        return 0, [f"{name}: keeping existing {video.name if video.exists() else frames_dir.name} "
                   "(--overwrite replaces it)"]
    problems = []
    fps, frames, total = clip_frames(source, problems)
    fps = args.fps or fps or 30.0
    tmp = out_dir / f".{name}_depth.tmp{os.getpid()}"
    shape, box_shape, n, lo, hi, prev = None, None, 0, math.inf, -math.inf, None
    try:
        with open(tmp, "wb") as f, tqdm(total=total, unit="frame", desc=name, dynamic_ncols=True) as bar:
            for i, frame in enumerate(frames):
                if shape is None:
                    shape = frame.shape[:2]
                elif frame.shape[:2] != shape:
                    problems.append(f"{name}: frame {i} is {frame.shape[1]}x{frame.shape[0]}, the clip "
                                    f"{shape[1]}x{shape[0]}: skipped")
                    bar.update(1)
                    continue
                x, box = fit_square(frame.transpose(2, 0, 1), backend.image_size, args.fit)
                depth = unfit_square(backend.run(x[None])["depth"][0, 0], box, box[2], box[3])  # crop only
                if prev is not None and (depth > 1e-3).any():  # the scale that brings this frame to the last
                    depth = align_median(depth, prev, depth > 1e-3)
                lo, hi, prev, box_shape = min(lo, float(depth.min())), max(hi, float(depth.max())), depth, depth.shape
                f.write(depth.astype(np.float32).tobytes())
                n += 1
                bar.update(1)
        if n == 0:
            return 0, problems + [f"{name}: no frame could be read"]
        aligned = np.memmap(tmp, np.float32, "r", shape=(n, *box_shape))
        if args.frames:
            frames_dir.mkdir(exist_ok=True)
            for i in tqdm(range(n), unit="frame", desc=f"{name} PNGs", dynamic_ncols=True):
                save_png16(frames_dir / f"{i:06d}.png", resize(np.array(aligned[i]), *shape) / max(hi, 1e-8))
        write_video(video, (colorize(resize(np.array(aligned[i]), *shape), args.cmap, lo, hi) for i in range(n)), fps)
        del aligned
    finally:
        tmp.unlink(missing_ok=True)
    return n, problems


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("inputs", nargs="+", help="image or video files, folders (their images) or glob patterns")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint (.safetensors), graph (.onnx) or TensorRT engine (.engine), or `release` (the "
                        "paper's model, after `python download.py release`); default the shipped "
                        "weights/depthart_small.safetensors")
    p.add_argument("--download", action="store_true", help="download a --checkpoint name (release) that is not here yet")
    p.add_argument("--target", choices=tuple(Z.TARGETS), default=None,
                   help="what to predict: depth or normals; the checkpoint says which it predicts, and --target "
                        "normals without --checkpoint takes the shipped weights/depthart_normals_tiny.safetensors")
    p.add_argument("--samples", type=int, default=1, metavar="N",
                   help="an ensemble of N sampled rollouts (PyTorch; --sampling release unless temperature is named; "
                        "--seed defaults to 0): their aligned median, and NAME_uncertainty.png (with a colour legend) "
                        "and NAME_uncertainty.npy, the per-pixel standard deviation of the aligned samples")
    p.add_argument("--sampling", choices=list(Z.SAMPLINGS), default="greedy",
                   help="greedy (default; deterministic; every backend) or the DepthART release's sampler (PyTorch)")
    p.add_argument("--seed", type=int, default=None, help="--sampling release: seed of its draws (default unseeded)")
    p.add_argument("--max-scale", type=int, metavar="K",
                   help="anytime depth: stop the rollout after the first K scales and decode that partial sum "
                        "(every backend; a checkpoint's graph is exported once per K)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="force a backend (default: the best present)")
    p.add_argument("--out", default="depth_out", help="output folder (default depth_out/)")
    p.add_argument("--fit", choices=FITS, default="pad",
                   help="how an image meets the square model: pad (default; keeps the aspect ratio) or squash")
    p.add_argument("--batch", type=int, default=1, help="images per model call (graphs are exported per batch size)")
    p.add_argument("--precision", choices=("auto",) + PRECISIONS, default="auto",
                   help="the exported graph's precision: auto (default: int8 on a machine without a GPU, else fp32), "
                        "fp32, fp16 (FP16 with the token-deciding parts in FP32; for TensorRT / CUDA, slower on the CPU) "
                        "or int8 (ONNX Runtime on the CPU; README, FP16 and INT8 graphs)")
    p.add_argument("--fp16", action="store_true", help="the same as --precision fp16")
    p.add_argument("--cache-dir", help=f"where exported graphs and engines are cached (default {default_cache_dir()})")
    p.add_argument("--npy", action="store_true", help="also write the float32 depth as .npy")
    p.add_argument("--ply", action="store_true", help="also write a coloured point cloud (.ply)")
    for name in ("fx", "fy", "cx", "cy"):
        p.add_argument(f"--{name}", type=float, help=f"--ply camera intrinsic {name} in pixels of the image")
    p.add_argument("--fov", type=float, default=60.0,
                   help="--ply without --fx and without an EXIF focal length: horizontal field of view, degrees (60)")
    p.add_argument("--known", nargs="+", type=known_point, metavar="X,Y,METRES",
                   help="metric depth at pixels of the image (column, row, metres): fit the relative depth to them "
                        "robustly and also write NAME_depth_metres.npy, NAME_depth_mm.png (16-bit millimetres) and "
                        "NAME_metric.ply (metres); one image only")
    p.add_argument("--sparse", metavar="DEPTH.npy",
                   help="a sparse metric depth map (H, W) of the image in metres, 0 = unknown: fitted as --known")
    p.add_argument("--scales", action="store_true", help="also write a strip of the depth after every scale")
    p.add_argument("--cmap", default="inferno_r", help="matplotlib colormap for the colour PNG (default inferno_r: near is bright)")
    p.add_argument("--sequence", action="store_true", help="a folder argument is one clip of frames (sorted by name)")
    p.add_argument("--fps", type=float, help="frame rate of the depth video (default: the video's own, 30 for --sequence)")
    p.add_argument("--frames", action="store_true", help="clips: also write a 16-bit depth PNG per frame")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    args = p.parse_args(argv)
    for name in ("fx", "fy", "fov", "fps"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            p.error(f"--{name} must be positive")
    if args.batch < 1:
        p.error("--batch must be at least 1")
    if args.samples < 1:
        p.error("--samples must be at least 1")
    if args.samples > 1 and args.seed is None:
        args.seed = 0  # an ensemble is repeatable unless a seed says otherwise
    if args.max_scale is not None and args.max_scale < 1:
        p.error("--max-scale must be at least 1")
    if args.checkpoint is None:
        args.checkpoint = str(DEFAULT_NORMALS_CHECKPOINT if args.target == "normals" else DEFAULT_CHECKPOINT)
    args.checkpoint = str(weights.resolve_arg(args.checkpoint, args.download, prog="infer_trt.py"))
    if args.target == "normals" and args.ply:
        p.error("--ply needs depth: a normals model has none")
    if args.sparse:
        try:
            sparse = np.load(args.sparse, allow_pickle=False)
        except (OSError, ValueError) as e:
            p.error(f"--sparse {args.sparse}: cannot read as .npy ({type(e).__name__}: {e})")
        if sparse.ndim != 2 or not np.issubdtype(sparse.dtype, np.number) or not (np.nan_to_num(sparse) > 0).any():
            p.error(f"--sparse {args.sparse}: expected a 2-D numeric depth map with some depth > 0, "
                    f"got shape {sparse.shape} {sparse.dtype}")
    try:
        args.fit_mode = fit_mode(args.checkpoint) if (args.known or args.sparse) else None
    except (OSError, ValueError) as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    paths, clips, failures = collect_inputs(args.inputs, args.sequence)
    for problem in failures:
        print(problem)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        hint = (" (the default; it ships with the repository: pass --checkpoint PATH to a .safetensors "
                "checkpoint from train.py, an .onnx graph from export.py or a TensorRT .engine)"
                if checkpoint in (DEFAULT_CHECKPOINT, DEFAULT_NORMALS_CHECKPOINT) else "")
        print(f"no checkpoint at {checkpoint}{hint}")
        return 2
    try:
        out_dir = writable_dir(args.out)
    except ValueError as e:
        print(f"--out: {e}")
        return 2
    if not paths and not clips:  # nothing readable: say so before spending seconds on a backend
        print(f"nothing to run: {len(failures)} input(s) named, none readable")
        return 1
    t0 = time.perf_counter()
    try:
        backend = load_backend(checkpoint, args.backend, args.batch, all_scales=args.scales,
                               precision="fp16" if args.fp16 else args.precision,
                               cache_dir=args.cache_dir, sampling=args.sampling, seed=args.seed,
                               max_scale=args.max_scale, samples=args.samples)
    except (ImportError, OSError, ValueError, RuntimeError) as e:  # EngineUnavailable is a RuntimeError
        print(f"cannot run {checkpoint} on backend {args.backend}: {type(e).__name__}: {e}")
        return 2
    if args.scales and not backend.has_scales:
        print(f"--scales needs a {backend.target}_scales output, which {checkpoint} lacks: export it with "
              f"--all-scales, or pass the checkpoint")
        return 2
    if args.target and backend.target != args.target:
        print(f"--target {args.target}: {checkpoint} predicts {backend.target}")
        return 2
    if (args.known or args.sparse) and (len(paths) != 1 or clips or backend.target != "depth"):
        print("--known/--sparse belong to one image: give exactly one image input, to a depth model")
        return 2
    if backend.target == "normals" and (args.ply or clips):
        print("a normals model writes normal maps of images: --ply and videos need a depth model")
        return 2
    print(f"backend: {backend.name} (ready in {time.perf_counter() - t0:.1f} s)")
    written = skipped_files = skipped_images = 0
    pending = []  # (path, image, todo)

    def flush():
        nonlocal written
        if not pending:
            return
        results = predict_arrays(backend, [img for _, img, _ in pending], args.fit, args.scales, with_uncertainty=True)
        for (path, img, todo), (depth, scales, unc) in zip(pending, results):
            try:
                write_outputs(todo, path, img, depth, scales, args, unc)
                written += 1
            except (OSError, ValueError) as e:  # ValueError: known points that do not fit this image
                failures.append(f"{path}: cannot write outputs ({e})")
                tqdm.write(failures[-1])
        pending.clear()

    with tqdm(total=len(paths), unit="img", disable=len(paths) < 2 or None, dynamic_ncols=True) as bar:
        for path, stem in zip(paths, output_stems(paths)):
            outs = planned_outputs(out_dir, stem, args, backend.target)
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
    videos = 0
    for name, source in clips:
        try:
            n, problems = run_clip(backend, name, source, out_dir, args)
        except Exception as e:  # noqa: BLE001 (not a video, an unknown codec, a full disk: one line, go on)
            n, problems = 0, [f"{source}: cannot make a depth video ({type(e).__name__}: {str(e).splitlines()[0]})"]
        videos += n > 0
        kept = [p for p in problems if "keeping existing" in p]
        failures += [p for p in problems if p not in kept]
        for line in problems:
            print(line)
        if n:
            print(f"{name}: {n} frames -> {out_dir / (name + '_depth.mp4')}")
    summary = (f"{written} images written to {out_dir}/, {skipped_images} skipped (outputs exist; --overwrite "
               f"replaces them), {len(failures)} failed" + (f", {skipped_files} existing files kept" if skipped_files else "")
               + (f", {videos} of {len(clips)} clips written" if clips else "") + f"; backend {backend.name}")
    print(summary)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
