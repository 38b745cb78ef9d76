"""Evaluate a relative-depth model on the published monocular depth benchmarks.

    python evaluate.py --checkpoint CKPT --dataset nyuv2|ibims1|eth3d|tum|hypersim|synthetic \
        --data-root DIR [--protocol depthart|marigold] [--out PREFIX] [--limit N] [--fit squash|pad]
    python evaluate.py --checkpoint CKPT --dataset world --scene-shape 64 96 --family box_room --fit pad
    python evaluate.py --checkpoint CKPT --dataset ordinal        # WHDR on real photographs
    python evaluate.py --checkpoint CKPT --dataset real --data-root DIR [--out PREFIX]   # realset.py's frames
    python evaluate.py --checkpoint NORMALS_CKPT --dataset nyuv2-normals|hypersim|world [--data-root DIR]

The metrics and the alignment of a relative prediction to metric ground truth live in metrics.py
(training and the experiment score with them too). This file reads top to bottom:

1. the two evaluation protocols (DepthART's and Marigold's) and their per-dataset rules,
2. iBims-1 planarity errors (pe-fla, pe-ori) as the official iBims-1 script defines them,
3. readers for each dataset in its official published layout,
4. `evaluate_dataset`: resize in, predict, resize back, align, score, aggregate, with every
   skipped image counted by reason (never averaged in as a zero),
5. baseline predictors (`const`, `ramp`; `facing` for normals) and the command line.

A normals model (or `--target normals`) is scored by `evaluate_normals` instead: angular errors
(metrics.normal_metrics) over valid pixels, per image then averaged, with no alignment (normals have
no unknown scale); the protocols' resizes apply, their depth ranges and alignments do not.

A *predictor* is any callable `predict(images) -> depth` taking float32 images (B, 3, h, w) in
[0, 1], already resized to the model's input size, and returning relative depth (B, 1, h', w')
in [0, 1] (larger = farther; a normalized depth, not a disparity).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image
from tqdm import tqdm

import data
import download
import infer_trt
from data import FITS, fit_square, package_file, read_image, resize, unfit_square, writable_dir
from metrics import (align_least_squares, align_median, constant_depth, facing_camera, image_metrics, normal_metrics,
                     ramp_depth, whdr)
from scenes import render_world

# --------------------------------------------------------------------------------------------
# 1. Protocols. A protocol says how the image is resized to the model's input (the model's own
#    size: 256x256 for DepthART's d16 model), how the prediction is resized back to the ground
#    truth (bilinear), how it is aligned, and per dataset which pixels count.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetRule:
    """Which ground-truth pixels one protocol evaluates on one dataset."""

    min_depth: float  # valid: depth > min_depth
    max_depth: float  # valid: depth <= max_depth (DepthART) or < max_depth (Marigold)
    max_inclusive: bool
    border_crop: int = 0  # pixels cut from every side of image AND ground truth before anything
    eval_crop: tuple | None = None  # (top, bottom, left, right): only this box of the GT counts
    align_max_res: int | None = None  # least-squares fit on a downsampled copy (Marigold ETH3D)
    note: str = ""


@dataclass(frozen=True)
class Protocol:
    name: str
    alignment: str  # "median" (scale only) | "least_squares" (scale and shift)
    image_resize: str  # interpolation of the image to the model size (antialiased)
    pred_align_corners: bool  # bilinear upsampling of the prediction to the GT size
    clip_to_range: bool  # clip the aligned prediction to [min_depth, max_depth] (Marigold)
    datasets: dict = field(default_factory=dict)


# DepthART (github bulatko/DepthART, mde/datasets/eval/*.py, mde/launchers/eval.py,
# mde/capsules/aligner): PIL bicubic image resize to 256x256, prediction upsampled with
# F.interpolate(bilinear, align_corners=True), scale by the median of g/p, metrics averaged per
# image. Valid = (depth > near) & (depth <= far). NYUv2 is cropped by 8 pixels on every side
# (image and depth). One deviation: the official loaders also downsample ETH3D/NYUv2/TUM ground
# truth to 256x256 (nearest) before scoring; here the GT keeps its size and the prediction is upsampled to it.
DEPTHART = Protocol(
    name="depthart",
    alignment="median",
    image_resize="bicubic",
    pred_align_corners=True,
    clip_to_range=False,
    datasets={
        "nyuv2": DatasetRule(1e-8, 10.0, True, border_crop=8),
        "eth3d": DatasetRule(1e-4, 72.0, True),
        "tum": DatasetRule(1e-2, 10.0, True),
        "ibims1": DatasetRule(1e-2, 50.0, True, note="plus invalid and transparent masks"),
        "hypersim": DatasetRule(1e-5, 65.0, True, note="range taken from Marigold"),
        "synthetic": DatasetRule(1e-5, math.inf, True),
        "world": DatasetRule(1e-5, math.inf, True),
    },
)

# Marigold (github prs-eth/Marigold, script/depth/eval.py, src/util/alignment.py,
# src/dataset/*_dataset.py, config/dataset_depth/*.yaml): bilinear antialiased resizes,
# least-squares scale and shift in depth space over valid pixels, then clip to the dataset's
# [min_depth, max_depth] and to >= 1e-6; valid = (depth > min) & (depth < max); metrics
# averaged per image (MetricTracker over batch-size-1 samples). NYUv2: 1e-3..10 m with the
# Eigen crop [45:471, 41:601] (eigen_valid_mask: true). ETH3D: 1e-5..inf, LS fitted at max
# resolution 1024 (32_eval_eth3d.sh). HyperSim: 1e-5..65 m. Marigold has no TUM or iBims-1
# depth evaluation: those use DepthART's ranges with Marigold's alignment.
MARIGOLD = Protocol(
    name="marigold",
    alignment="least_squares",
    image_resize="bilinear",
    pred_align_corners=False,
    clip_to_range=True,
    datasets={
        "nyuv2": DatasetRule(1e-3, 10.0, False, eval_crop=(45, 471, 41, 601)),
        "eth3d": DatasetRule(1e-5, math.inf, False, align_max_res=1024),
        "tum": DatasetRule(1e-2, 10.0, False, note="not in Marigold; DepthART's range"),
        "ibims1": DatasetRule(1e-2, 50.0, False, note="not in Marigold; DepthART's range"),
        "hypersim": DatasetRule(1e-5, 65.0, False),
        "synthetic": DatasetRule(1e-5, math.inf, False),
        "world": DatasetRule(1e-5, math.inf, False),
    },
)

PROTOCOLS = {"depthart": DEPTHART, "marigold": MARIGOLD}


def evaluation_mask(depth, valid, rule):
    """The pixels a rule scores: the reader's valid mask, a finite depth in range, the eval crop."""
    depth = np.asarray(depth)
    with np.errstate(invalid="ignore"):
        in_range = depth > rule.min_depth
        in_range &= (depth <= rule.max_depth) if rule.max_inclusive else (depth < rule.max_depth)
    mask = np.asarray(valid, dtype=bool) & np.isfinite(depth) & in_range
    if rule.eval_crop is not None:
        top, bottom, left, right = rule.eval_crop
        box = np.zeros_like(mask)
        box[top:bottom, left:right] = True
        mask &= box
    return mask


# --------------------------------------------------------------------------------------------
# 2. iBims-1 planarity errors (Koch et al. 2018; official evaluate_ibims_error_metrics.py,
#    compute_planarity_error). For each labelled plane (wall, table, floor) whose valid pixels
#    cover at least 5% of the image: scale the prediction by median(gt)/median(pred) inside the
#    plane, back-project with the intrinsics, fit a plane by PCA; pe-fla = 100 * std of the
#    signed point-to-plane distances (cm), pe-ori = angle between the fitted normal (sign
#    matched) and the ground-truth normal (degrees). The dataset figures average over all planes
#    of all images. Coordinates here are OpenCV camera coordinates (x right, y down, z forward,
#    0-based pixel centres); the iBims-1 reader converts the official MATLAB-style conventions
#    (1-based pixels, x right / y forward / z up) into them, which gives the same numbers.
# --------------------------------------------------------------------------------------------

MIN_PLANE_FRACTION = 0.05


def backproject(depth, K):
    """Planar depth (H, W) -> camera points (H, W, 3): X = (u - cx) Z / fx, Y = (v - cy) Z / fy,
    Z = depth, with u the column and v the row index (0-based) and K = [[fx,0,cx],[0,fy,cy],[0,0,1]]."""
    depth = np.asarray(depth, dtype=np.float64)
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w]
    fx, fy, cx, cy = K[0][0], K[1][1], K[0][2], K[1][2]
    return np.stack([(u - cx) * depth / fx, (v - cy) * depth / fy, depth], axis=-1)


def fit_plane_pca(points):
    """Least-squares plane through points (N, 3): returns (unit normal n, offset d) with
    n . x + d = 0 on the plane; n is the direction of least variance (PCA), d = -n . centroid."""
    points = np.asarray(points, dtype=np.float64)
    centroid = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centroid, full_matrices=False)
    normal = vt[-1]
    return normal, float(-normal @ centroid)


def angle_between(a, b):
    """Angle in degrees between two 3-vectors, atan2(|a x b|, a . b) (stable near 0)."""
    return math.degrees(math.atan2(np.linalg.norm(np.cross(a, b)), float(np.dot(a, b))))


def planarity_errors(pred, gt, plane_masks, K, min_fraction=MIN_PLANE_FRACTION):
    """pe-fla (cm) and pe-ori (degrees) for each plane large enough to count.

    plane_masks: list of (mask, gt_normal) pairs, mask a boolean (H, W) array already restricted
    to valid pixels, gt_normal a 3-vector in camera coordinates, or None to take the normal of a
    PCA plane fitted to the ground-truth points. Planes covering less than min_fraction of the
    image are left out, as the official script leaves them out (NaN) of its average.
    Returns a list of (pe_fla, pe_ori), one per counted plane.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    errors = []
    for mask, gt_normal in plane_masks:
        mask = np.asarray(mask, dtype=bool) & (gt > 0) & (pred > 0)
        if mask.sum() < min_fraction * mask.size:
            continue
        scaled = pred * (np.median(gt[mask]) / np.median(pred[mask]))
        points = backproject(scaled, K)[mask]
        normal, offset = fit_plane_pca(points)
        pe_fla = 100.0 * float(np.std(points @ normal + offset))
        if gt_normal is None:
            gt_normal, _ = fit_plane_pca(backproject(gt, K)[mask])
        gt_normal = np.asarray(gt_normal, dtype=np.float64)
        if np.dot(normal, gt_normal) < 0:
            normal = -normal
        errors.append((pe_fla, angle_between(gt_normal, normal)))
    return errors


# --------------------------------------------------------------------------------------------
# 3. Readers. Each yields samples {"name", "image": float32 (H, W, 3) in [0, 1],
#    "depth": float32 (H, W) metres, "valid": bool (H, W), optional "K": 3x3,
#    optional "planes": list of {"kind", "mask", "normal"}}; or, for an entry whose files cannot
#    be read, {"name", "skip": reason}. A missing dataset root or index file raises instead.
# --------------------------------------------------------------------------------------------

SKIP_MISSING = "missing file"
SKIP_UNREADABLE = "unreadable file"
SKIP_SIZE = "size mismatch"
SKIP_EMPTY = "empty valid mask"
SKIP_NONFINITE = "non-finite prediction"


def read_png_array(path):
    """A PNG as its stored integer values (16-bit depth PNGs stay 16-bit)."""
    with Image.open(path) as im:
        return np.asarray(im)


def _entry(name, load):
    """Run one entry's loader; turn unreadable input into a counted skip instead of a crash."""
    try:
        return load()
    except FileNotFoundError:
        return {"name": name, "skip": SKIP_MISSING}
    except (OSError, ValueError, KeyError):
        return {"name": name, "skip": SKIP_UNREADABLE}


def _require(path, what):
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return Path(path)


# NYU Depth V2, labeled subset (nyu_depth_v2_labeled.mat, MATLAB v7.3 = HDF5): `images`
# (1449, 3, 640, 480) uint8 and `rawDepths`/`depths` (1449, 640, 480) float32 metres, both
# column-major so transposed here to 480x640. splits.mat (MATLAB v5) holds 1-based testNdxs
# (654) and trainNdxs (795). Both protocols score the raw sensor depth (`rawDepths`, 0 = no
# measurement): Marigold's depth_*.png are the raw maps (filled_*.png are `depths`), DepthART
# reads raw_depth_test.pkl.
NYU_K = np.array([[518.858, 0.0, 325.582], [0.0, 519.470, 253.736], [0.0, 0.0, 1.0]])


def read_split_indices(path, key):
    """0-based indices from a splits.mat (MATLAB v5 via scipy, or v7.3 via h5py)."""
    try:
        indices = scipy.io.loadmat(path)[key]
    except NotImplementedError:  # a v7.3 file
        with h5py.File(path, "r") as f:
            indices = f[key][()]
    return np.asarray(indices).astype(np.int64).ravel() - 1


def read_nyuv2(root, split="test", depth_key="rawDepths"):
    root = Path(root)
    mat = _require(root / "nyu_depth_v2_labeled.mat", "NYUv2 labeled .mat")
    indices = read_split_indices(_require(root / "splits.mat", "NYUv2 splits.mat"),
                                 "testNdxs" if split == "test" else "trainNdxs")
    with h5py.File(mat, "r") as f:
        images, depths = f["images"], f[depth_key]
        for i in indices:
            name = f"nyu_{i + 1:04d}"

            def load(i=i, name=name):
                depth = np.asarray(depths[i], dtype=np.float32).T
                return {"name": name,
                        "image": np.asarray(images[i]).transpose(2, 1, 0).astype(np.float32) / 255.0,
                        "depth": depth, "valid": depth > 0, "K": NYU_K.copy()}

            yield _entry(name, load)


# NYUv2 surface normals: the ground truth of GeoNet (Qi et al., CVPR 2018; github xjqi/GeoNet) for the
# 654 test images of the standard split, as redistributed in DSINE's evaluation set (Bae & Davison,
# CVPR 2024; github baegwangbin/DSINE: the dsine_eval download, data/datasets/nyuv2/__init__.py, and
# split/test.txt, which lists the 654 files), the layout later normal estimators read:
#   ROOT/test/NNNNNN_img.png      8-bit RGB, 640x480; NNNNNN = the 0-based index in the labeled set
#   ROOT/test/NNNNNN_normal.png   8-bit RGB: n = value / 255 * 2 - 1; (0, 0, 0) = no ground truth
#   ROOT/test/NNNNNN_intrins.npy  (3, 3) camera matrix (not needed here)
# Convention: DSINE's normals point along the camera rays (its RayReLU, models/dsine/submodules.py, keeps
# cos(n, ray) > 0 for rays ((u - cx) / fx, (v - cy) / fy, 1)), i.e. they are our facing-the-camera normals
# (x right, y down, z forward) negated; the reader returns ours.
def nyuv2_normals_from_png(rgb_HW3) -> tuple[np.ndarray, np.ndarray]:
    """DSINE/GeoNet NYUv2 normal PNG (uint8) -> (unit normals (H, W, 3) in our frame, valid (H, W))."""
    rgb = np.asarray(rgb_HW3)
    valid = rgb.astype(np.int64).sum(-1) > 0
    n = -(rgb.astype(np.float64) / 255.0 * 2.0 - 1.0)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)  # 8-bit rounding
    return np.where(valid[..., None], n, 0.0).astype(np.float32), valid


def read_nyuv2_normals(root, split="test"):
    folder = _require(Path(root) / split, f"NYUv2 normals {split}/ folder (DSINE's dsine_eval/nyuv2 layout)")
    images = sorted(folder.glob("*_img.png"))
    if not images:
        raise FileNotFoundError(f"no NNNNNN_img.png files in {folder} (DSINE's dsine_eval/nyuv2 layout)")
    for img in images:
        name = f"nyu_normals_{img.name[:-len('_img.png')]}"

        def load(img=img, name=name):
            normals, valid = nyuv2_normals_from_png(read_png_array(img.with_name(img.name.replace("_img.png", "_normal.png")))[..., :3])
            return {"name": name, "image": read_image(img), "normals": normals, "valid": valid}

        yield _entry(name, load)


# iBims-1, the ibims1_core_raw release (chosen over ibims1_core_mat: plain files, no MATLAB
# structs): imagelist.txt, rgb/NAME.png, depth/NAME.png (uint16, metres = value * 50 / 65535),
# mask_invalid/NAME.png and mask_transp/NAME.png (nonzero = usable), calib/NAME.txt
# ("fx,fy,cx,cy", MATLAB 1-based principal point), mask_{wall,table,floor}/NAME.png (plane j is
# labelled j+1) with NAME.txt (one line per plane, 7 comma-separated numbers, the normal in
# columns 4..6 in iBims coordinates x right, y forward, z up). Either may be absent.
IBIMS_DEPTH_SCALE = 50.0 / 65535.0
IBIMS_PLANE_KINDS = ("wall", "table", "floor")


def ibims_normal_to_camera(n):
    """iBims plane normal (x right, y forward, z up) -> OpenCV camera frame (x right, y down,
    z forward): (nx, ny, nz) -> (nx, -nz, ny)."""
    return np.array([n[0], -n[2], n[1]], dtype=np.float64)


def _read_ibims_planes(root, name, kind, valid_shape):
    png, txt = root / f"mask_{kind}" / f"{name}.png", root / f"mask_{kind}" / f"{name}.txt"
    if not (png.exists() and txt.exists()):
        return []
    labels = read_png_array(png)
    if labels.shape != valid_shape:
        raise ValueError(f"{png}: plane mask size {labels.shape} != {valid_shape}")
    rows = [line for line in txt.read_text().splitlines() if line.strip()]
    planes = []
    for j, line in enumerate(rows):
        values = [float(x) for x in line.replace(",", " ").split()]
        planes.append({"kind": kind, "mask": labels == j + 1,
                       "normal": ibims_normal_to_camera(values[4:7])})
    return planes


def ibims_image_names(root):
    for candidate in (root / "imagelist.txt", root.parent / "imagelist.txt"):
        if candidate.exists():
            return [line.strip() for line in candidate.read_text().splitlines() if line.strip()]
    return sorted(p.stem for p in _require(root / "rgb", "iBims-1 rgb/ folder").glob("*.png"))


def read_ibims1(root):
    root = _require(Path(root), "iBims-1 root")
    for name in ibims_image_names(root):

        def load(name=name):
            image = read_image(root / "rgb" / f"{name}.png")
            depth = read_png_array(root / "depth" / f"{name}.png").astype(np.float32) * IBIMS_DEPTH_SCALE
            invalid_ok = read_png_array(root / "mask_invalid" / f"{name}.png") > 0
            transp_ok = read_png_array(root / "mask_transp" / f"{name}.png") > 0
            if not (invalid_ok.shape == transp_ok.shape == depth.shape):
                return {"name": name, "skip": SKIP_SIZE}
            fx, fy, cx, cy = (float(x) for x in
                              (root / "calib" / f"{name}.txt").read_text().replace(",", " ").split()[:4])
            K = np.array([[fx, 0.0, cx - 1.0], [0.0, fy, cy - 1.0], [0.0, 0.0, 1.0]])
            planes = []
            for kind in IBIMS_PLANE_KINDS:
                planes += _read_ibims_planes(root, name, kind, depth.shape)
            return {"name": name, "image": image, "depth": depth,
                    "valid": invalid_ok & transp_ok & (depth > 0), "K": K, "planes": planes}

        yield _entry(name, load)


# ETH3D high-resolution multi-view training scenes, as published: SCENE_dslr_jpg.7z gives
# SCENE/images/dslr_images/DSC_*.JPG (the original, distorted DSLR images, which the GT depth
# matches) and SCENE_dslr_depth.7z gives SCENE/ground_truth_depth/dslr_images/DSC_*.JPG: raw
# little-endian float32, row-major 4032x6048 despite the suffix, inf = no depth. Extract both
# into one root. Marigold's eth3d.tar layout (rgb/SCENE/images/dslr_images/...,
# depth/SCENE_dslr_depth/SCENE/ground_truth_depth/dslr_images/...) is read too.
ETH3D_SHAPE = (4032, 6048)


def eth3d_pairs(root):
    """(name, image path, depth path) for every ground-truth depth file under root."""
    pairs = []
    for depth in sorted(root.glob("*/ground_truth_depth/dslr_images/*")):
        scene = depth.parts[-4]
        pairs.append((f"{scene}/{depth.name}", root / scene / "images" / "dslr_images" / depth.name, depth))
    for depth in sorted(root.glob("depth/*_dslr_depth/*/ground_truth_depth/dslr_images/*")):
        scene = depth.parts[-4]
        pairs.append((f"{scene}/{depth.name}",
                      root / "rgb" / scene / "images" / "dslr_images" / depth.name, depth))
    return pairs


def read_eth3d_depth(path, shape=ETH3D_SHAPE):
    raw = np.fromfile(path, dtype="<f4")
    if raw.size != shape[0] * shape[1]:
        raise ValueError(f"{path}: {raw.size} floats, expected {shape[0]}x{shape[1]}")
    return raw.reshape(shape).astype(np.float32)


def read_eth3d(root, shape=ETH3D_SHAPE):
    root = _require(Path(root), "ETH3D root")
    for name, image_path, depth_path in eth3d_pairs(root):

        def load(name=name, image_path=image_path, depth_path=depth_path):
            image = read_image(image_path)
            try:
                depth = read_eth3d_depth(depth_path, shape)
            except ValueError:
                return {"name": name, "skip": SKIP_SIZE}
            return {"name": name, "image": image, "depth": depth, "valid": np.isfinite(depth) & (depth > 0)}

        yield _entry(name, load)


# TUM RGB-D (a sequence folder rgbd_dataset_freiburg*_*/ with rgb.txt, depth.txt,
# rgb/*.png, depth/*.png; depth PNG uint16 / 5000 = metres, 0 = missing). Pairing follows the
# benchmark's associate.py rule: every (rgb, depth) timestamp pair closer than 0.02 s is a
# candidate; candidates are taken greedily from the smallest difference, each timestamp used
# once; the pairs are then evaluated in rgb time order. --data-root may be one sequence or a
# folder of sequences.
TUM_DEPTH_SCALE = 1.0 / 5000.0
TUM_MAX_DT = 0.02


def read_tum_list(path):
    """rgb.txt / depth.txt -> {timestamp: relative path}; '#' lines are comments."""
    entries = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            stamp, rel = line.split()[:2]
            entries[float(stamp)] = rel
    return entries


def associate_timestamps(first, second, max_dt=TUM_MAX_DT):
    """Greedy one-to-one association of two timestamp lists by smallest |difference| < max_dt;
    returns (a, b) pairs sorted by a."""
    candidates = sorted((abs(a - b), a, b) for a in first for b in second if abs(a - b) < max_dt)
    used_a, used_b, pairs = set(), set(), []
    for _, a, b in candidates:
        if a not in used_a and b not in used_b:
            used_a.add(a)
            used_b.add(b)
            pairs.append((a, b))
    return sorted(pairs)


def tum_sequences(root):
    if (root / "rgb.txt").exists():
        return [root]
    sequences = sorted(p.parent for p in root.glob("*/rgb.txt"))
    if not sequences:
        raise FileNotFoundError(f"no TUM sequence (rgb.txt) under {root}")
    return sequences


def read_tum(root, max_dt=TUM_MAX_DT):
    root = _require(Path(root), "TUM root")
    for sequence in tum_sequences(root):
        rgb_list = read_tum_list(sequence / "rgb.txt")
        depth_list = read_tum_list(_require(sequence / "depth.txt", "TUM depth.txt"))
        for t_rgb, t_depth in associate_timestamps(sorted(rgb_list), sorted(depth_list), max_dt):
            name = f"{sequence.name}/{t_rgb:.6f}"

            def load(name=name, rgb=sequence / rgb_list[t_rgb], depth=sequence / depth_list[t_depth]):
                d = read_png_array(depth).astype(np.float32) * TUM_DEPTH_SCALE
                return {"name": name, "image": read_image(rgb), "depth": d, "valid": d > 0}

            yield _entry(name, load)


# HyperSim and the procedural synthetic scenes come from data.py's make_dataset, whose items
# are {"image": (3, H, W) in [0, 1], "depth": (1, H, W) metres, "valid": (1, H, W) bool}.
# A HyperSim frame that cannot be read is a counted skip here: the dataset's own __getitem__ (for
# training) would substitute the next frame, which would then be scored twice.
def read_data_module(kind, root=None, split="test", size=None, normals=False):
    dataset = data.make_dataset(kind, split=split, size=size, root=root, **({"normals": True} if normals else {}))
    load = getattr(dataset, "load", dataset.__getitem__)  # HyperSim.load: one frame, no substitution

    def sample(i):
        item = load(i)
        depth = np.asarray(item["depth"], dtype=np.float32)
        valid = np.asarray(item["valid"], dtype=bool)
        out = {"name": f"{kind}_{split}_{i:05d}",
               "image": np.asarray(item["image"], dtype=np.float32).transpose(1, 2, 0),
               "depth": depth.reshape(depth.shape[-2:]), "valid": valid.reshape(valid.shape[-2:])}
        if normals:
            out["normals"] = np.asarray(item["normals"], dtype=np.float32).transpose(1, 2, 0)
        return out

    for i in range(len(dataset)):
        yield _entry(f"{kind}_{split}_{i:05d}", lambda i=i: sample(i))


# The new synthetic world (scenes.render_world) at any size, non-square included, with exact depth:
# scene i of a split is seed SPLIT_START + i (data.py's held-out seed ranges), photometric augmentation off.
def read_world(root=None, split="test", shape=(64, 96), family=None, length=1000):
    if split not in ("val", "test"):
        raise ValueError(f"world: split {split!r} is not held out; use val or test")
    first = data.SPLIT_SEED_START[split]
    for i in range(length):
        scene = render_world(first + i, size=tuple(shape), family=family, augment=False)
        yield {"name": f"world_{scene['family']}_{first + i}", "image": scene["image"], "depth": scene["depth"],
               "valid": scene["valid"], "normals": scene["normals"]}


# depthart's own real validation set, made by realset.py (which documents the sources): one folder per frame,
#   DIR/FRAME/image.png       8-bit RGB
#   DIR/FRAME/depth.npy       float32 (H, W) metres, 0 = invalid          (meta "kind": "metric")
#   DIR/FRAME/disparity.npy   float32 (H, W) pixels, 0 = invalid          (meta "kind": "disparity_only")
#   DIR/FRAME/meta.json       {"source", "kind", "licence", "repository", "commit", "paths", ...}
REAL_KINDS = {"metric": "depth.npy", "disparity_only": "disparity.npy"}


def real_frame_dirs(root):
    """The frame folders of a real set (those holding meta.json), sorted by name; one-line errors otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"real set {root}: no such folder (build it with realset.py)")
    frames = sorted(p.parent for p in root.glob("*/meta.json"))
    if not frames:
        raise ValueError(f"real set {root}: no FRAME/meta.json inside (the layout realset.py writes)")
    return frames


def read_real(root):
    for folder in real_frame_dirs(root):
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("kind") not in REAL_KINDS or "source" not in meta:
            raise ValueError(f"{folder / 'meta.json'}: needs \"source\" and \"kind\" one of {sorted(REAL_KINDS)}")

        def load(folder=folder, meta=meta):
            image = read_image(folder / "image.png")
            target = np.load(folder / REAL_KINDS[meta["kind"]]).astype(np.float32)
            if target.shape != image.shape[:2]:
                return {"name": folder.name, "skip": SKIP_SIZE}
            valid = np.isfinite(target) & (target > 0)
            return {"name": folder.name, "source": meta["source"], "kind": meta["kind"], "image": image,
                    "target": np.where(valid, target, 0.0).astype(np.float32), "valid": valid}

        yield _entry(folder.name, load)


READERS = {
    "nyuv2": read_nyuv2,
    "ibims1": read_ibims1,
    "eth3d": read_eth3d,
    "tum": read_tum,
    "hypersim": lambda root, **kw: read_data_module("hypersim", root, **kw),
    "synthetic": lambda root, **kw: read_data_module("synthetic", root, **kw),
    "world": read_world,
    "nyuv2-normals": read_nyuv2_normals,
}
NORMALS_DATASETS = ("nyuv2-normals", "hypersim", "world")  # the readers with normals


def open_dataset(name, root, **options):
    """The sample iterator of a dataset by name (see READERS)."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(READERS)}")
    return READERS[name](root, **options)


# --------------------------------------------------------------------------------------------
# 4. Running a predictor over a dataset.
# --------------------------------------------------------------------------------------------


def crop_border(sample, b):
    """Cut b pixels from every side of the image, depth, valid and plane masks; shift K."""
    if b <= 0:
        return sample
    out = dict(sample)
    for key in ("image", "depth", "valid"):
        out[key] = sample[key][b:-b, b:-b]
    if sample.get("K") is not None:
        K = np.array(sample["K"], dtype=np.float64)
        K[0, 2] -= b
        K[1, 2] -= b
        out["K"] = K
    if sample.get("planes"):
        out["planes"] = [dict(p, mask=p["mask"][b:-b, b:-b]) for p in sample["planes"]]
    return out


def _as_size(size):
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def _get_protocol(protocol):
    return PROTOCOLS[protocol] if isinstance(protocol, str) else protocol


def evaluate_dataset(samples, predict, protocol, dataset, input_size, batch_size=4, progress=False, fit="squash"):
    """Score predict on samples under protocol's rules for dataset.

    Per sample: drop it (counted by reason) if the reader could not read it, the image and depth
    sizes differ, or no pixel survives the valid mask, range and crop; else resize the image to
    input_size, predict in batches, resize the prediction bilinearly to the GT size, align it,
    clip it (Marigold), and score it; iBims-1 planes add planarity errors. Returns a dict with
    the per-image means ("metrics"), the counts, the skips by reason and per-image results.
    """
    protocol = _get_protocol(protocol)
    rule = protocol.datasets[dataset]
    input_size = _as_size(input_size)
    if fit not in FITS or (fit == "pad" and input_size[0] != input_size[1]):
        raise ValueError(f"fit {fit!r}: expected squash, or pad with a square input size")
    skipped, per_image, plane_errors = Counter(), [], []
    pending = []

    def score(entry, pred_small):
        gt, mask = entry["depth"], entry["mask"]
        pred = unfit_square(pred_small, entry["box"], *gt.shape, "bilinear", protocol.pred_align_corners)
        if not np.isfinite(pred[mask]).all():
            skipped[SKIP_NONFINITE] += 1
            return
        if protocol.alignment == "median":
            aligned = align_median(pred, gt, mask)
        else:
            aligned = align_least_squares(pred, gt, mask, max_res=rule.align_max_res)
        if protocol.clip_to_range:
            aligned = np.clip(aligned, rule.min_depth, rule.max_depth)
            aligned = np.clip(aligned, 1e-6, None)
        if not np.isfinite(aligned[mask]).all():
            skipped[SKIP_NONFINITE] += 1
            return
        result = {"name": entry["name"], **image_metrics(aligned, gt, mask)}
        if entry.get("planes") and entry.get("K") is not None:
            # the official iBims-1 evaluation scales the raw prediction per plane (median ratio); a
            # least-squares shift (Marigold) would bend planes, so the planes never see the alignment
            planes = [(p["mask"] & mask, p.get("normal")) for p in entry["planes"]]
            errors = planarity_errors(pred, gt, planes, entry["K"])
            plane_errors.extend(errors)
            result["planes"] = len(errors)
        per_image.append(result)

    def flush():
        if not pending:
            return
        batch = np.stack([entry.pop("input") for entry in pending]).astype(np.float32)
        preds = np.asarray(predict(batch), dtype=np.float32)
        if preds.ndim != 4 or preds.shape[:2] != (len(pending), 1):
            raise ValueError(f"predictor returned shape {preds.shape}, expected ({len(pending)}, 1, h, w)")
        for entry, pred in zip(pending, preds):
            score(entry, pred[0])
        pending.clear()

    iterator = samples
    if progress:
        iterator = tqdm(samples, desc=f"{dataset} ({protocol.name})", unit="img", file=sys.stderr)
    for sample in iterator:
        if "skip" in sample:
            skipped[sample["skip"]] += 1
            continue
        if sample["image"].shape[:2] != sample["depth"].shape or sample["valid"].shape != sample["depth"].shape:
            skipped[SKIP_SIZE] += 1
            continue
        sample = crop_border(sample, rule.border_crop)
        mask = evaluation_mask(sample["depth"], sample["valid"], rule)
        if not mask.any():
            skipped[SKIP_EMPTY] += 1
            continue
        # Keep only the resized image: full-size ETH3D images are ~300 MB each.
        image_3HW = np.asarray(sample["image"], np.float32).transpose(2, 0, 1)
        if fit == "pad":  # keep the aspect ratio: pad to the square, crop the prediction back
            model_input, box = fit_square(image_3HW, input_size[0], "pad", protocol.image_resize)
        else:
            model_input, box = resize(image_3HW, *input_size, protocol.image_resize), None
        pending.append({"name": sample["name"], "input": np.clip(model_input, 0.0, 1.0), "mask": mask, "box": box,
                        "depth": np.asarray(sample["depth"], dtype=np.float32),
                        "planes": sample.get("planes"), "K": sample.get("K")})
        if len(pending) >= batch_size:
            flush()
    flush()

    metrics = {}
    for key in ("abs_rel", "delta1", "delta2", "delta3", "bad_d1", "rmse"):
        metrics[key] = float(np.mean([r[key] for r in per_image])) if per_image else float("nan")
    if plane_errors:
        metrics["pe_fla"] = float(np.mean([e[0] for e in plane_errors]))
        metrics["pe_ori"] = float(np.mean([e[1] for e in plane_errors]))
    return {"dataset": dataset, "protocol": protocol.name, "input_size": list(input_size), "fit": fit,
            "n_images": len(per_image), "n_planes": len(plane_errors), "metrics": metrics,
            "skipped": dict(skipped), "per_image": per_image}


def evaluate_normals(samples, predict, input_size, batch_size=4, progress=False, fit="squash",
                     image_resize="bilinear", dataset="normals"):
    """Score a normals predictor (images (B, 3, S, S) -> normals (B, 3, S, S)) on samples with "image",
    "normals" (H, W, 3, our camera frame) and "valid": the prediction is resized bilinearly to the ground
    truth, renormalized, and scored by normal_metrics over valid pixels; per image, then averaged. No
    alignment. Unreadable entries, size mismatches and empty masks are counted skips, as in evaluate_dataset."""
    input_size = _as_size(input_size)
    skipped, per_image, pending = Counter(), [], []

    def flush():
        if not pending:
            return
        preds = np.asarray(predict(np.stack([e.pop("input") for e in pending])), dtype=np.float32)
        if preds.ndim != 4 or preds.shape[:2] != (len(pending), 3):
            raise ValueError(f"predictor returned shape {preds.shape}, expected ({len(pending)}, 3, h, w): not a normals model")
        for entry, pred in zip(pending, preds):
            pred = unfit_square(pred, entry["box"], *entry["valid"].shape)
            if not np.isfinite(pred[:, entry["valid"]]).all():
                skipped[SKIP_NONFINITE] += 1
                continue
            per_image.append({"name": entry["name"], **normal_metrics(pred, entry["normals"].transpose(2, 0, 1), entry["valid"])})
        pending.clear()

    for sample in tqdm(samples, desc=f"{dataset} (normals)", unit="img", file=sys.stderr) if progress else samples:
        if "skip" in sample:
            skipped[sample["skip"]] += 1
            continue
        if sample["image"].shape[:2] != sample["valid"].shape or sample["normals"].shape[:2] != sample["valid"].shape:
            skipped[SKIP_SIZE] += 1
            continue
        if not sample["valid"].any():
            skipped[SKIP_EMPTY] += 1
            continue
        image_3HW = np.asarray(sample["image"], np.float32).transpose(2, 0, 1)
        if fit == "pad":
            x, box = fit_square(image_3HW, input_size[0], "pad", image_resize)
        else:
            x, box = resize(image_3HW, *input_size, image_resize), None
        pending.append({"name": sample["name"], "input": np.clip(x, 0.0, 1.0).astype(np.float32), "box": box,
                        "normals": np.asarray(sample["normals"], np.float32), "valid": np.asarray(sample["valid"], bool)})
        if len(pending) >= batch_size:
            flush()
    flush()
    keys = ("mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30")
    metrics = {k: float(np.mean([r[k] for r in per_image])) if per_image else float("nan") for k in keys}
    return {"dataset": dataset, "protocol": "normals (no alignment)", "input_size": list(input_size), "fit": fit,
            "n_images": len(per_image), "n_planes": 0, "metrics": metrics, "skipped": dict(skipped),
            "per_image": per_image}


# --------------------------------------------------------------------------------------------
# The real set (realset.py): every frame scored under two protocols from one prediction, beside the ramp and a
# constant.
#   depthart: DepthART's (median scale of depth, valid = depth > 0), metric frames only.
#   affine:   MiDaS's affine-invariant protocol (Ranftl et al., TPAMI 2020): least-squares scale and shift of the
#             prediction's inverse depth to the true inverse depth over valid pixels, then AbsRel and delta in
#             depth. The aligned inverse depth is clipped from below at the frame's smallest true inverse depth
#             (its farthest valid depth), as MiDaS's evaluation clips to a dataset's depth cap, so no pixel lands
#             at infinite or negative depth. A disparity_only frame has no depth: its stereo disparity is the
#             target, and AbsRel / delta are computed in disparity space (|d' - d| / d), which measures the same
#             relative error as depth space to first order but is not the same number; those frames are averaged
#             apart, never mixed into the metric frames' means, and get no depthart score (a median scale of
#             1/d is depth only if the pair's disparity offset is zero, which their copy cannot confirm).
# One prediction per frame: the image goes in with DepthART's bicubic resize and --fit (pad by default for
# real photographs, as the ordinal check), and comes back bilinearly (align_corners, DepthART's). The model's
# relative depth p (in [0, 1], depth / its 98th percentile) becomes inverse depth as 1 / max(p, 0.01).
# The baselines are drawn at the frame's own size: the ramp (near at the bottom, metrics.ramp_depth) and a
# constant (metrics.constant_depth; after the affine fit, the frame's mean inverse depth).
# --------------------------------------------------------------------------------------------

REAL_PRED_MIN = 0.01  # smallest relative depth inverted: 1% of the prediction's 98th-percentile depth
REAL_PROTOCOLS = ("depthart", "affine")
REAL_PREDICTORS = ("model", "ramp", "const")


def align_affine_inverse(pred_depth, target_inverse, valid):
    """Least-squares scale and shift of 1 / pred_depth to target_inverse over valid pixels, clipped from below at
    the smallest valid target_inverse -> aligned inverse depth (H, W) float64."""
    inverse = 1.0 / np.maximum(np.asarray(pred_depth, np.float64), REAL_PRED_MIN)
    aligned = align_least_squares(inverse, target_inverse, valid).astype(np.float64)
    return np.maximum(aligned, float(np.min(np.asarray(target_inverse)[valid])))


def score_real_frame(pred, sample) -> dict:
    """Both protocols' scores of one prediction (H, W, relative depth) on one real frame."""
    valid, target = sample["valid"], sample["target"].astype(np.float64)
    out = {"depthart": None}
    if sample["kind"] == "metric":
        out["depthart"] = image_metrics(align_median(pred, target, valid), target, valid)
        inverse_target = np.where(valid, 1.0 / np.where(valid, target, 1.0), 0.0)
        out["affine"] = image_metrics(1.0 / align_affine_inverse(pred, inverse_target, valid), target, valid)
    else:  # disparity_only: scored in disparity space
        out["affine"] = image_metrics(align_affine_inverse(pred, target, valid), target, valid)
    return out


def evaluate_real(samples, predict, input_size, fit="pad", progress=False) -> dict:
    """Score predict, the ramp and the constant on every frame of a real set under both protocols.
    Returns {"frames": [{"name", "source", "kind", "valid_fraction", "model"|"ramp"|"const": {protocol: metrics}}],
    "means": {predictor: {protocol: {group: {metric: mean, "n": frames}}}}, "skipped": {reason: n}}; a group is a
    source name, "all metric" (every metric frame) or "all disparity_only"."""
    input_size = _as_size(input_size)
    skipped, frames = Counter(), []
    for sample in tqdm(samples, desc="real", unit="img", file=sys.stderr) if progress else samples:
        if "skip" in sample:
            skipped[sample["skip"]] += 1
            continue
        if not sample["valid"].any():
            skipped[SKIP_EMPTY] += 1
            continue
        H, W = sample["valid"].shape
        x, box = fit_square(sample["image"].transpose(2, 0, 1), input_size[0], fit, DEPTHART.image_resize)
        raw = np.asarray(predict(np.clip(x, 0.0, 1.0)[None].astype(np.float32)), np.float32)
        pred = unfit_square(raw[0, 0], box, H, W, "bilinear", DEPTHART.pred_align_corners)
        if not np.isfinite(pred[sample["valid"]]).all():
            skipped[SKIP_NONFINITE] += 1
            continue
        row = {"name": sample["name"], "source": sample["source"], "kind": sample["kind"],
               "valid_fraction": float(sample["valid"].mean())}
        for name, p in (("model", pred), ("ramp", ramp_depth(H, W)), ("const", constant_depth(H, W))):
            row[name] = score_real_frame(p, sample)
        frames.append(row)
    means = {}
    for predictor in REAL_PREDICTORS:
        means[predictor] = {}
        for protocol in REAL_PROTOCOLS:
            groups = {}
            for key in sorted({f["source"] for f in frames}) + ["all metric", "all disparity_only"]:
                rows = [f[predictor][protocol] for f in frames
                        if f[predictor][protocol] is not None and key in (f["source"], f"all {f['kind']}")]
                if rows:
                    groups[key] = {m: float(np.mean([r[m] for r in rows])) for m in rows[0]} | {"n": len(rows)}
            means[predictor][protocol] = groups
    return {"dataset": "real", "input_size": list(input_size), "fit": fit, "frames": frames, "means": means,
            "skipped": dict(skipped)}


def format_real(result) -> str:
    """Per-frame rows and per-source / overall means: AbsRel and delta1 of model, ramp and constant under
    both protocols (disparity_only frames: affine only, in disparity space)."""
    head = ("| frame | source | valid | " + " | ".join(f"{p} {proto} AbsRel / d1" for proto in ("depthart", "affine")
                                                    for p in REAL_PREDICTORS) + " |")
    lines = [f"real set / input {result['input_size'][0]}x{result['input_size'][1]} ({result['fit']})", head,
             "|" + "---|" * (3 + 2 * len(REAL_PREDICTORS))]

    def cell(m):
        return "-" if m is None else f"{m['abs_rel']:.3f} / {m['delta1']:.3f}"

    for f in result["frames"]:
        lines.append(f"| {f['name']} | {f['source']} | {f['valid_fraction']:.2f} | "
                     + " | ".join(cell(f[p][proto]) for proto in REAL_PROTOCOLS for p in REAL_PREDICTORS) + " |")
    groups = list(dict.fromkeys(g for p in REAL_PREDICTORS for proto in REAL_PROTOCOLS for g in result["means"][p][proto]))
    for g in groups:
        n = max(result["means"]["model"][proto].get(g, {}).get("n", 0) for proto in REAL_PROTOCOLS)
        lines.append(f"| **mean {g}** | {n} frames | | "
                     + " | ".join(cell(result["means"][p][proto].get(g)) for proto in REAL_PROTOCOLS
                                  for p in REAL_PREDICTORS) + " |")
    total = sum(result["skipped"].values())
    lines.append(f"skipped: {total}" + "".join(f"\n  {r}: {n}" for r, n in sorted(result["skipped"].items())))
    return "\n".join(lines)


# The ordinal check: real photographs that Python packages ship, with point pairs labelled by
# looking ("A is nearer than B"); scored by WHDR (metrics.whdr). No photograph of it is a texture
# of the synthetic world (scenes.TEXTURES).
ORDINAL_PAIRS = Path(__file__).resolve().parent / "docs" / "ordinal_pairs.json"


def ordinal_check(predict, input_size, fit="pad", pairs_path=ORDINAL_PAIRS) -> dict:
    """WHDR per photograph and over all pairs: the photograph is fitted to the model's square (fit),
    the prediction taken back to the photograph's shape and sampled at the pairs' coordinates."""
    spec = json.loads(Path(pairs_path).read_text())
    rows = []
    for im in spec["images"]:
        image_3HW = read_image(package_file(im["package"], im["file"])).transpose(2, 0, 1)
        x, box = fit_square(image_3HW, _as_size(input_size)[0], fit)
        pred = np.asarray(predict(np.clip(x, 0.0, 1.0)[None]), dtype=np.float32)[0, 0]
        depth = unfit_square(pred, box, *image_3HW.shape[1:])
        rows.append({"photo": f"{im['package']}/{im['file']}", "pairs": len(im["pairs"]), "whdr": whdr(depth, im["pairs"])})
    n = sum(r["pairs"] for r in rows)
    return {"dataset": "ordinal", "photos": rows, "n_pairs": n,
            "whdr": sum(r["whdr"] * r["pairs"] for r in rows) / n}


def format_ordinal(result) -> str:
    lines = ["| photograph | pairs | WHDR |", "|---|---|---|"]
    lines += [f"| {r['photo']} | {r['pairs']} | {r['whdr']:.3f} |" for r in result["photos"]]
    return "\n".join(lines + [f"| all pairs | {result['n_pairs']} | {result['whdr']:.3f} |"])


# --------------------------------------------------------------------------------------------
# 5. Baseline predictors and the command line.
# --------------------------------------------------------------------------------------------


class Baseline:
    """A predictor that ignores the image: the same depth map (metrics.py's) for every input, or the same
    normal map ((3, h, w), target "normals")."""

    def __init__(self, depth_map, image_size=256, target="depth"):
        self.depth_map, self.image_size, self.target = depth_map, image_size, target

    def predict(self, images):
        b, _, h, w = images.shape
        y = self.depth_map(h, w)
        return np.broadcast_to(y.reshape(1, -1, h, w), (b, y.size // (h * w), h, w)).copy()

    __call__ = predict


BASELINES = {"const": constant_depth, "ramp": ramp_depth, "facing": facing_camera}  # facing: normals

METRIC_LABELS = [
    ("abs_rel", "AbsRel"), ("delta1", "delta1"), ("delta2", "delta2"), ("delta3", "delta3"),
    ("bad_d1", "bad d1 (>1.25)"), ("rmse", "RMSE (m)"), ("pe_fla", "pe-fla (cm)"), ("pe_ori", "pe-ori (deg)"),
    ("mean_angle", "mean angle (deg)"), ("median_angle", "median (deg)"), ("within_11.25", "< 11.25 deg"),
    ("within_22.5", "< 22.5 deg"), ("within_30", "< 30 deg"),
]


def load_predictor(checkpoint, input_size=None, sampling="greedy", seed=None):
    """const / ramp / facing baselines, or infer_trt.load_backend(checkpoint) for a model file (greedy on the
    best backend, or the release's sampler in PyTorch).
    Returns (predict callable, model input size, target: "depth" or "normals")."""
    if checkpoint in BASELINES:
        target = "normals" if checkpoint == "facing" else "depth"
        predictor = Baseline(BASELINES[checkpoint], image_size=input_size or 256, target=target)
        return predictor.predict, predictor.image_size, target
    backend = infer_trt.load_backend(checkpoint, sampling=sampling, seed=seed)
    return backend.predict, input_size or backend.image_size, backend.target


def format_table(result):
    protocol = result["protocol"]
    lines = [f"{result['dataset']} / {protocol} protocol / input {result['input_size'][0]}x{result['input_size'][1]}"
             f" ({result.get('fit', 'squash')})",
             f"{'metric':<16}{'value':>10}"]
    for key, label in METRIC_LABELS:
        if key in result["metrics"]:
            lines.append(f"{label:<16}{result['metrics'][key]:>10.4f}")
    lines.append(f"{'images':<16}{result['n_images']:>10d}")
    if result["n_planes"]:
        lines.append(f"{'planes':<16}{result['n_planes']:>10d}")
    total = sum(result["skipped"].values())
    lines.append(f"skipped: {total}" + "".join(f"\n  {reason}: {n}" for reason, n in sorted(result["skipped"].items())))
    return "\n".join(lines)


def write_outputs(result, prefix):
    """PREFIX.json (everything, per image included) and PREFIX.csv (metric, value rows + counts)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = Path(f"{prefix}.json"), Path(f"{prefix}.csv")

    # NaN (e.g. no image survived) becomes null: strict JSON has no NaN.
    serializable = json.loads(json.dumps(result, default=float), parse_constant=lambda c: None)
    json_path.write_text(json.dumps(serializable, indent=2))
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "value"])
        for key, _ in METRIC_LABELS:
            if key in result["metrics"]:
                writer.writerow([key, f"{result['metrics'][key]:.6f}"])
        writer.writerow(["n_images", result["n_images"]])
        writer.writerow(["n_planes", result["n_planes"]])
        for reason, n in sorted(result["skipped"].items()):
            writer.writerow([f"skipped: {reason}", n])
    return json_path, csv_path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="model file for infer_trt.load_backend (.safetensors of ours or the DepthART release, "
                             ".onnx, .engine), release (the paper's model, after `python download.py release`), or "
                             "const / ramp (depth) / facing (normals: every pixel facing the camera)")
    parser.add_argument("--download", action="store_true", help="download a --checkpoint name (release) that is not here yet")
    parser.add_argument("--sampling", choices=["greedy", "release"], default="greedy",
                        help="greedy (default; every backend) or the DepthART release's sampler (PyTorch)")
    parser.add_argument("--seed", type=int, default=None, help="--sampling release: seed of its draws")
    parser.add_argument("--dataset", required=True, choices=sorted(READERS) + ["ordinal", "real"],
                        help="a benchmark, the built-in synthetic scenes, ordinal (docs/ordinal_pairs.json), or real "
                             "(realset.py's folder: both protocols, beside ramp and constant); "
                             f"normals: {', '.join(NORMALS_DATASETS)}")
    parser.add_argument("--data-root", default=None, help="dataset folder in its published layout")
    parser.add_argument("--protocol", default="depthart", choices=sorted(PROTOCOLS))
    parser.add_argument("--out", default=None, help="write PREFIX.json and PREFIX.csv")
    parser.add_argument("--limit", type=int, default=None, help="only the first N dataset entries")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--input-size", type=int, default=None,
                        help="model input side (default: the backend's own size; 256 for baselines)")
    parser.add_argument("--split", default="test", help="split for nyuv2 / hypersim / synthetic")
    parser.add_argument("--scene-size", type=int, default=None,
                        help="size passed to data.make_dataset for hypersim / synthetic")
    parser.add_argument("--eth3d-shape", type=int, nargs=2, default=list(ETH3D_SHAPE), metavar=("H", "W"))
    parser.add_argument("--scene-shape", type=int, nargs=2, default=[64, 96], metavar=("H", "W"),
                        help="world: the rendered size (default 64 96; non-square allowed)")
    parser.add_argument("--family", default=None, help="world: one scene family (box_room, room, corridor, ...)")
    parser.add_argument("--fit", default=None, choices=FITS,
                        help="squash (default, the published protocols: resize to the square input) or pad "
                             "(keep the aspect ratio, pad to the square, crop the prediction back; the default "
                             "for --dataset real, as the ordinal check's README commands use)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.checkpoint not in BASELINES:
        args.checkpoint = str(download.resolve_arg(args.checkpoint, args.download, prog="evaluate.py"))
    try:
        return run(args)
    except (ValueError, OSError, RuntimeError) as e:  # missing files, bad layouts, unwritable --out: one line
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args):
    if args.fit is None:
        args.fit = "pad" if args.dataset == "real" else "squash"
    if args.dataset not in ("synthetic", "world", "ordinal"):
        if args.data_root is None:
            raise ValueError(f"--data-root is required for {args.dataset}")
        if not Path(args.data_root).exists():
            raise ValueError(f"--data-root {args.data_root}: no such file or folder")
    if args.out:
        writable_dir(Path(args.out).parent)  # before the evaluation, not after it
    predict, input_size, target = load_predictor(args.checkpoint, args.input_size, args.sampling, args.seed)
    if target == "normals":
        return run_normals(args, predict, input_size)
    if args.dataset == "nyuv2-normals":
        raise ValueError(f"--dataset nyuv2-normals scores normals; {args.checkpoint} predicts depth")
    if args.dataset == "real":
        return run_real(args, predict, input_size)
    if args.dataset == "ordinal":
        result = dict(ordinal_check(predict, input_size, args.fit), checkpoint=args.checkpoint, fit=args.fit)
        print(format_ordinal(result))
        if args.out:
            Path(f"{args.out}.json").parent.mkdir(parents=True, exist_ok=True)
            Path(f"{args.out}.json").write_text(json.dumps(result, indent=1))
        return result
    options = {}
    if args.dataset == "nyuv2":
        options["split"] = args.split
    elif args.dataset == "eth3d":
        options["shape"] = tuple(args.eth3d_shape)
    elif args.dataset in ("hypersim", "synthetic"):
        options.update(split=args.split, size=args.scene_size)
    elif args.dataset == "world":
        options.update(split=args.split, shape=args.scene_shape, family=args.family)
    samples = open_dataset(args.dataset, args.data_root, **options)
    if args.limit is not None:
        samples = itertools.islice(samples, args.limit)
    result = evaluate_dataset(samples, predict, args.protocol, args.dataset, input_size,
                              batch_size=args.batch_size, progress=not args.no_progress, fit=args.fit)
    return report(result, args)


def run_real(args, predict, input_size):
    samples = read_real(args.data_root)
    if args.limit is not None:
        samples = itertools.islice(samples, args.limit)
    result = dict(evaluate_real(samples, predict, input_size, args.fit, progress=not args.no_progress),
                  checkpoint=args.checkpoint, sampling=args.sampling, seed=args.seed)
    print(format_real(result))
    if args.out:
        path = Path(f"{args.out}.json")
        path.write_text(json.dumps(json.loads(json.dumps(result, default=float), parse_constant=lambda c: None), indent=1))
        print(f"wrote {path}")
    return result


def report(result, args):
    result["checkpoint"], result["sampling"], result["seed"] = args.checkpoint, args.sampling, args.seed
    print(format_table(result))
    if args.out:
        for path in write_outputs(result, args.out):
            print(f"wrote {path}")
    return result


def run_normals(args, predict, input_size):
    """A normals model: angular errors on a dataset with normals (no protocol alignment)."""
    if args.dataset not in NORMALS_DATASETS:
        raise ValueError(f"{args.checkpoint} predicts normals; --dataset must be one with normals: "
                         f"{', '.join(NORMALS_DATASETS)}")
    options = {"split": args.split}
    if args.dataset == "hypersim":
        options.update(size=args.scene_size, normals=True)
    elif args.dataset == "world":
        options.update(shape=args.scene_shape, family=args.family)
    samples = open_dataset(args.dataset, args.data_root, **options)
    if args.limit is not None:
        samples = itertools.islice(samples, args.limit)
    result = evaluate_normals(samples, predict, input_size, args.batch_size, not args.no_progress, args.fit,
                              _get_protocol(args.protocol).image_resize, args.dataset)
    return report(result, args)


if __name__ == "__main__":
    main()
