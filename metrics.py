"""Scores of a depth or normals prediction against ground truth, shared by training, evaluation and the experiment.

Every function takes numpy arrays of one image: pred and gt (same shape, gt in metres) and a boolean
valid mask, and scores the valid pixels; a dataset figure is the mean over images. The model predicts
relative depth, so a prediction is aligned to the ground truth first (median scale, or least-squares
scale and shift). Surface normals need no alignment: they are scored by the angle between predicted and
true normals (section 4). Also here: the trivial predictors every model must beat.
"""
from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------------------------
# 1. Metrics. Each takes pred, gt (metres, same shape) and a boolean valid mask, and scores one
#    image over its valid pixels. Ratios use numpy's inf for a zero prediction, which counts as a
#    bad pixel rather than crashing.
# --------------------------------------------------------------------------------------------

DELTA_BASE = 1.25


def _valid_pair(pred, gt, valid):
    valid = np.asarray(valid, dtype=bool)
    return np.asarray(pred, dtype=np.float64)[valid], np.asarray(gt, dtype=np.float64)[valid]


def _max_ratio(p, g):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(p / g, g / p)


def abs_rel(pred, gt, valid):
    """Absolute relative error: mean over valid pixels of |p - g| / g."""
    p, g = _valid_pair(pred, gt, valid)
    return float(np.mean(np.abs(p - g) / g))


def rmse(pred, gt, valid):
    """Root mean squared error in metres: sqrt(mean over valid pixels of (p - g)^2)."""
    p, g = _valid_pair(pred, gt, valid)
    return float(np.sqrt(np.mean((p - g) ** 2)))


def delta_acc(pred, gt, valid, k=1):
    """Threshold accuracy delta_k: fraction of valid pixels with max(p/g, g/p) < 1.25**k."""
    p, g = _valid_pair(pred, gt, valid)
    return float(np.mean(_max_ratio(p, g) < DELTA_BASE**k))


def bad_d1(pred, gt, valid):
    """DepthART's "d1" column: fraction of valid pixels with max(p/g, g/p) > 1.25.

    This is 1 - delta1 except for ratios of exactly 1.25, which neither counts. Lower is better.
    """
    p, g = _valid_pair(pred, gt, valid)
    return float(np.mean(_max_ratio(p, g) > DELTA_BASE))


def image_metrics(pred, gt, valid):
    """All per-image depth metrics of one aligned prediction, as a dict."""
    return {
        "abs_rel": abs_rel(pred, gt, valid),
        "delta1": delta_acc(pred, gt, valid, 1),
        "delta2": delta_acc(pred, gt, valid, 2),
        "delta3": delta_acc(pred, gt, valid, 3),
        "bad_d1": bad_d1(pred, gt, valid),
        "rmse": rmse(pred, gt, valid),
    }


# --------------------------------------------------------------------------------------------
# 2. Alignment: the model predicts relative depth; the metrics need metres.
# --------------------------------------------------------------------------------------------


def align_median(pred, gt, valid, ratio_of_medians=False):
    """Scale-only alignment: returns s * pred.

    Default (DepthART's code, `align_si_l1`): s = median over valid pixels of g / p.
    With ratio_of_medians=True: s = median(g) / median(p) over valid pixels (what the iBims-1
    planarity error uses inside each plane). Both are exact for a pred that is a pure scale of gt.
    """
    p, g = _valid_pair(pred, gt, valid)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.median(g) / np.median(p) if ratio_of_medians else np.median(g / p)
    return (np.asarray(pred, dtype=np.float64) * s).astype(np.float32)


def median_aligned_scores(preds, gts, valids) -> tuple[list, list]:
    """Per-image AbsRel and delta1 after median-scale alignment: the quick figures that training's
    validation and experiment.py report (arrays of (H, W) predictions, metres, masks)."""
    rel, d1 = [], []
    for p, g, m in zip(preds, gts, valids):
        p = align_median(p, g, m)
        rel.append(abs_rel(p, g, m))
        d1.append(delta_acc(p, g, m, 1))
    return rel, d1


def nearest_subsample(array, max_res):
    """Nearest-neighbour downsample so that neither side exceeds max_res (Marigold fits its
    least-squares alignment on such a copy for ETH3D); returns the array unchanged if it fits."""
    h, w = array.shape[-2:]
    factor = min(max_res / h, max_res / w)
    if factor >= 1:
        return array
    rows = np.minimum((np.arange(int(h * factor)) / factor).astype(int), h - 1)
    cols = np.minimum((np.arange(int(w * factor)) / factor).astype(int), w - 1)
    return array[..., rows[:, None], cols[None, :]]


def align_least_squares(pred, gt, valid, max_res=None):
    """Scale-and-shift alignment in depth space: returns s * pred + t, where (s, t) minimise
    sum over valid pixels of (s p + t - g)^2. Closed form: s = cov(p, g) / var(p),
    t = mean(g) - s mean(p). A constant prediction (var(p) = 0) gets s = 0, t = mean(g), the
    same aligned map a least-squares solver returns. max_res: fit on a nearest-neighbour
    downsampled copy (Marigold's --alignment_max_res)."""
    fit_p, fit_g, fit_v = pred, gt, valid
    if max_res is not None:
        fit_p, fit_g, fit_v = (nearest_subsample(np.asarray(a), max_res) for a in (pred, gt, valid))
    p, g = _valid_pair(fit_p, fit_g, fit_v)
    p_mean, g_mean = p.mean(), g.mean()
    var = np.mean((p - p_mean) ** 2)
    if var <= 1e-12 * max(p_mean * p_mean, 1e-12):
        scale, shift = 0.0, g_mean
    else:
        scale = np.mean((p - p_mean) * (g - g_mean)) / var
        shift = g_mean - scale * p_mean
    return (np.asarray(pred, dtype=np.float64) * scale + shift).astype(np.float32)


def whdr(depth_HW, pairs) -> float:
    """Ordinal error on human-labelled point pairs: the WHDR of Chen et al., "Single-Image Depth
    Perception in the Wild" (NeurIPS 2016), every weight 1. The fraction of pairs whose depth order
    the map gets wrong; a tie or a non-finite value counts as wrong. Lower is better.

    pairs: [{"a": [x, y], "b": [x, y], "nearer": "a" | "b"}], x = column / width and y = row / height
    of the photo, so a map of any size (H, W) is sampled at its nearest pixel (rint(x W), rint(y H)).
    """
    d = np.asarray(depth_HW, dtype=np.float64)
    H, W = d.shape

    def at(xy):
        return d[min(max(int(np.rint(xy[1] * H)), 0), H - 1), min(max(int(np.rint(xy[0] * W)), 0), W - 1)]

    wrong = 0
    for p in pairs:
        near, far = (at(p["a"]), at(p["b"])) if p["nearer"] == "a" else (at(p["b"]), at(p["a"]))
        wrong += not (np.isfinite(near) and np.isfinite(far) and near < far)
    return wrong / len(pairs)


# --------------------------------------------------------------------------------------------
# 3. Trivial predictors: what a model that ignores the image achieves.
# --------------------------------------------------------------------------------------------


def constant_depth(H: int, W: int) -> np.ndarray:
    """The same depth everywhere: after alignment, the scene's median (or mean) depth."""
    return np.ones((H, W), dtype=np.float32)


def ramp_depth(H: int, W: int) -> np.ndarray:
    """"Floor near, top far": depth grows linearly from 1 at the bottom row to 2 at the top row.

    Scale-only alignment sees the ratio 2 between top and bottom; scale-and-shift alignment makes
    every linear ramp equivalent.
    """
    rows = np.linspace(2.0, 1.0, H, dtype=np.float32) if H > 1 else np.ones(1, np.float32)
    return np.broadcast_to(rows[:, None], (H, W)).copy()


# --------------------------------------------------------------------------------------------
# 4. Surface normals: angular error in degrees, the standard of Eigen & Fergus (ICCV 2015), Bansal et
#    al. (CVPR 2016) and later normal estimators: mean and median angle over an image's valid pixels,
#    and the fraction of them within 11.25, 22.5 and 30 degrees (per image here; a dataset figure is the
#    mean over images).
# --------------------------------------------------------------------------------------------

ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)


def angular_errors(pred_3HW, gt_3HW, valid_HW) -> np.ndarray:
    """Angle in degrees between predicted and true normals at every valid pixel -> (P,) float64.

    Both are renormalized first (a prediction need not be unit length; a zero vector scores 90 degrees),
    and the cosine is clipped to [-1, 1] against rounding."""
    valid = np.asarray(valid_HW, dtype=bool)
    p = np.asarray(pred_3HW, dtype=np.float64)[:, valid]
    g = np.asarray(gt_3HW, dtype=np.float64)[:, valid]
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = (p * g).sum(0) / (np.linalg.norm(p, axis=0) * np.linalg.norm(g, axis=0))
    return np.degrees(np.arccos(np.clip(np.nan_to_num(cos, nan=0.0), -1.0, 1.0)))


def normal_metrics(pred_3HW, gt_3HW, valid_HW) -> dict:
    """Mean and median angular error (degrees) and the fraction of pixels within 11.25 / 22.5 / 30 degrees."""
    e = angular_errors(pred_3HW, gt_3HW, valid_HW)
    return {"mean_angle": float(e.mean()), "median_angle": float(np.median(e)),
            **{f"within_{t:g}": float(np.mean(e < t)) for t in ANGLE_THRESHOLDS}}


def mean_normal_metrics(preds, gts, valids) -> dict:
    """normal_metrics per image ((N, 3, H, W) predictions, truths and (N, H, W) masks), averaged over images."""
    rows = [normal_metrics(p, g, m) for p, g, m in zip(preds, gts, valids)]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def facing_camera(H: int, W: int) -> np.ndarray:
    """The trivial normals predictor: every pixel faces the camera, (0, 0, -1) in the camera frame (x right,
    y down, z forward) -> (3, H, W)."""
    n = np.zeros((3, H, W), dtype=np.float32)
    n[2] = -1.0
    return n


# --------------------------------------------------------------------------------------------
# 4. Ensembles, uncertainty, and metric depth from a few known points
# --------------------------------------------------------------------------------------------
FIT_MODES = ("scale", "affine")  # what a model's relative depth allows: d = s p (the paper's q98), or d = s p + t


def _lsq(p, g, mode: str) -> tuple[float, float]:
    """Least-squares (s, t) of s p + t to g (t = 0 for mode "scale")."""
    if mode == "scale":
        return float(np.dot(p, g) / max(np.dot(p, p), 1e-12)), 0.0
    a = np.stack([p, np.ones_like(p)], 1)
    (s, t), *_ = np.linalg.lstsq(a, g, rcond=None)
    return float(s), float(t)


def ensemble(samples_NHW, mode: str = "scale", iters: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """N relative depth maps of one image (N sampled rollouts) -> (depth, uncertainty), both (H, W) float32.

    As Marigold aligns its ensemble: each sample is fitted by least squares (scale, or scale and shift where the
    target allows) to the running per-pixel median, `iters` times; depth is the aligned samples' median and
    uncertainty their per-pixel standard deviation (in the same relative units; 0 for N = 1). The scales are
    renormalized to a geometric mean of 1, so the ensemble's depth keeps the samples' level."""
    x = np.asarray(samples_NHW, np.float64)
    if x.ndim != 3 or len(x) < 1:
        raise ValueError(f"expected samples (N, H, W) with N >= 1, got shape {x.shape}")
    if mode not in FIT_MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(FIT_MODES)}")
    aligned = x.copy()
    for _ in range(iters if len(x) > 1 else 0):
        m = np.median(aligned, 0).ravel()
        st = np.array([_lsq(xi.ravel(), m, mode) for xi in x])
        st[:, 0] = np.where(st[:, 0] > 1e-6, st[:, 0], 1.0)  # a degenerate sample keeps its own scale
        st /= np.exp(np.mean(np.log(st[:, 0])))
        aligned = x * st[:, 0, None, None] + st[:, 1, None, None]
    return np.median(aligned, 0).astype(np.float32), aligned.std(0).astype(np.float32)


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long 1-D arrays (ties take their mean rank)."""
    from scipy.stats import spearmanr
    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


def ause(errors, uncertainty, steps: int = 20) -> float:
    """Area under the sparsification error curve (Ilg et al. 2018): remove the most uncertain pixels in `steps`
    fractions, and take the mean error of what is left; the same with the largest errors removed first (the
    oracle) is the best any uncertainty can do. AUSE = mean over fractions of (curve - oracle); 0 is perfect
    ranking. The curves are normalized by the mean error of all pixels, so images with larger errors do not
    weigh more."""
    e, u = np.ravel(errors).astype(np.float64), np.ravel(uncertainty).astype(np.float64)
    by_u, by_e = e[np.argsort(-u, kind="stable")], e[np.argsort(-e, kind="stable")]
    n, total = len(e), max(e.mean(), 1e-12)
    curve, oracle = [], []
    for f in np.arange(steps) / steps:
        k = int(round(f * n))
        curve.append(by_u[k:].mean() / total)
        oracle.append(by_e[k:].mean() / total)
    return float(np.mean(np.array(curve) - np.array(oracle)))


def fit_known(pred, known, mask, mode: str = "scale", refit: float | None = None, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Relative depth pred (H, W) and metric depth known at the pixels of mask -> (metric depth (H, W) float32,
    {"scale", "shift", "points", "inliers"}), robust to wrong points:
      scale   s = median of known / pred (half the points may be wrong before it moves far);
      affine  Theil-Sen: s = median of the slopes between pairs of points (at most 20000 pairs, seeded), t = median
              of known - s pred; needs 2 points.
    "inliers" counts the points within 25% of the fit. refit r: drop the points whose relative error exceeds r
    and fit again (off by default: with the shipped model, whose depth ratios are far off on real photographs,
    it kept too few points and cost AbsRel; studies.py known). Points where pred is not positive cannot be
    fitted and are left out. One-line ValueErrors for too few points."""
    if mode not in FIT_MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(FIT_MODES)}")
    pred = np.asarray(pred, np.float64)
    known = np.asarray(known, np.float64)
    if known.shape != pred.shape or np.shape(mask) != pred.shape:
        raise ValueError(f"known depth {known.shape} and mask {np.shape(mask)} must match the prediction {pred.shape}")
    use = np.asarray(mask, bool) & np.isfinite(known) & (known > 0) & (pred > 1e-6)
    p, g = pred[use], known[use]
    need = 1 if mode == "scale" else 2
    if len(p) < need:
        raise ValueError(f"{mode} fit needs at least {need} known point(s) where the prediction is positive, "
                         f"got {len(p)}")
    rng = np.random.default_rng(seed)

    def fit(p, g):
        if mode == "scale":
            return float(np.median(g / p)), 0.0
        i, j = np.triu_indices(len(p), 1)
        if len(i) > 20000:
            pick = rng.choice(len(i), 20000, replace=False)
            i, j = i[pick], j[pick]
        dp = p[j] - p[i]
        ok = np.abs(dp) > 1e-9
        s = float(np.median((g[j] - g[i])[ok] / dp[ok])) if ok.any() else float(np.median(g / p))
        return s, float(np.median(g - s * p))

    s, t = fit(p, g)
    if refit is not None:
        keep = np.abs(s * p + t - g) <= refit * g
        if need <= keep.sum() < len(p):
            s, t = fit(p[keep], g[keep])
    keep = np.abs(s * p + t - g) <= 0.25 * g
    return (s * pred + t).astype(np.float32), {"scale": s, "shift": t, "points": int(len(p)), "inliers": int(keep.sum())}
