"""Tests for evaluate.py: metrics, alignment, protocols, planarity, readers, skips, CLI."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate as ev  # noqa: E402
import metrics as M  # noqa: E402
from conftest import Started, selected  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Metrics, worked by hand.
# pred = [1, 2, 3, 3.5, (10)], gt = [1, 2.5, 2, 2, (1)], last pixel invalid.
#   |p-g|/g      = 0, 0.5/2.5=0.2, 1/2=0.5, 1.5/2=0.75      -> AbsRel = 1.45/4 = 0.3625
#   (p-g)^2      = 0, 0.25, 1, 2.25                         -> RMSE = sqrt(3.5/4) = sqrt(0.875)
#   max(p/g,g/p) = 1, 1.25, 1.5, 1.75
#   delta1: < 1.25      -> {1}              = 1/4
#   delta2: < 1.5625    -> {1, 1.25, 1.5}   = 3/4
#   delta3: < 1.953125  -> all four         = 1
#   bad d1: > 1.25      -> {1.5, 1.75}      = 2/4  (the ratio of exactly 1.25 is in neither)
# ---------------------------------------------------------------------------------------------

PRED = np.array([1.0, 2.0, 3.0, 3.5, 10.0])
GT = np.array([1.0, 2.5, 2.0, 2.0, 1.0])
VALID = np.array([True, True, True, True, False])


def test_abs_rel_by_hand():
    assert M.abs_rel(PRED, GT, VALID) == pytest.approx(0.3625)


def test_rmse_by_hand():
    assert M.rmse(PRED, GT, VALID) == pytest.approx(math.sqrt(0.875))


def test_delta_acc_by_hand():
    assert M.delta_acc(PRED, GT, VALID, 1) == pytest.approx(0.25)
    assert M.delta_acc(PRED, GT, VALID, 2) == pytest.approx(0.75)
    assert M.delta_acc(PRED, GT, VALID, 3) == pytest.approx(1.0)


def test_bad_d1_by_hand_and_relation_to_delta1():
    assert M.bad_d1(PRED, GT, VALID) == pytest.approx(0.5)
    # Without a ratio of exactly 1.25, bad d1 is 1 - delta1: drop pixel 1 (ratio 1.25).
    valid = VALID.copy()
    valid[1] = False
    assert M.bad_d1(PRED, GT, valid) == pytest.approx(1 - M.delta_acc(PRED, GT, valid, 1))


def test_zero_prediction_counts_as_bad_pixel():
    pred, gt, valid = np.array([0.0, 2.0]), np.array([1.0, 2.0]), np.array([True, True])
    assert M.bad_d1(pred, gt, valid) == pytest.approx(0.5)
    assert M.abs_rel(pred, gt, valid) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------

def _scene(seed=0, shape=(20, 30)):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0.5, 8.0, size=shape)
    valid = rng.random(shape) > 0.2
    return gt, valid


def test_exact_scale_is_zero_error_under_both_alignments():
    gt, valid = _scene()
    pred = gt / 3.7
    for aligned in (M.align_median(pred, gt, valid), M.align_least_squares(pred, gt, valid)):
        assert M.abs_rel(aligned, gt, valid) < 1e-6
        assert M.bad_d1(aligned, gt, valid) == 0.0


def test_scale_and_shift_is_zero_only_under_least_squares():
    gt, valid = _scene(1)
    pred = (gt - 0.4) / 2.0
    assert M.abs_rel(M.align_least_squares(pred, gt, valid), gt, valid) < 1e-6
    assert M.abs_rel(M.align_median(pred, gt, valid), gt, valid) > 1e-2


def test_median_of_ratios_versus_ratio_of_medians():
    # g/p = [1, 3, 2] -> median 2;  median(g) / median(p) = 6 / 2 = 3
    pred, gt, valid = np.array([1.0, 2.0, 3.0]), np.array([1.0, 6.0, 6.0]), np.ones(3, bool)
    np.testing.assert_allclose(M.align_median(pred, gt, valid), pred * 2)
    np.testing.assert_allclose(M.align_median(pred, gt, valid, ratio_of_medians=True), pred * 3)


def test_least_squares_constant_prediction_gives_mean():
    gt, valid = _scene(2)
    aligned = M.align_least_squares(np.full(gt.shape, 0.5), gt, valid)
    np.testing.assert_allclose(aligned, gt[valid].mean(), rtol=1e-5)


def test_least_squares_on_subsampled_copy_still_exact():
    gt, valid = _scene(3, shape=(60, 90))
    pred = 0.25 * gt + 1.0
    aligned = M.align_least_squares(pred, gt, valid, max_res=16)
    assert M.abs_rel(aligned, gt, valid) < 1e-5
    assert M.nearest_subsample(gt, 16).shape == (10, 16)


# ---------------------------------------------------------------------------------------------
# Protocol rules
# ---------------------------------------------------------------------------------------------

def test_marigold_nyu_eigen_crop_and_strict_range():
    depth = np.full((480, 640), 5.0)
    depth[100, 100] = 10.0  # max depth itself: excluded by Marigold (<), kept by DepthART (<=)
    mask = ev.evaluation_mask(depth, np.ones_like(depth, bool), ev.MARIGOLD.datasets["nyuv2"])
    assert mask.sum() == (471 - 45) * (601 - 41) - 1
    assert not mask[44, 300] and mask[45, 300] and not mask[470, 601]
    mask = ev.evaluation_mask(depth, np.ones_like(depth, bool), ev.DEPTHART.datasets["nyuv2"])
    assert mask.all()


def test_depthart_nyu_border_crop_cuts_image_depth_and_shifts_K():
    sample = {"name": "x", "image": np.zeros((480, 640, 3)), "depth": np.ones((480, 640)),
              "valid": np.ones((480, 640), bool), "K": ev.NYU_K.copy()}
    out = ev.crop_border(sample, ev.DEPTHART.datasets["nyuv2"].border_crop)
    assert out["image"].shape == (464, 624, 3) and out["depth"].shape == (464, 624)
    assert out["K"][0, 2] == pytest.approx(ev.NYU_K[0, 2] - 8)


def test_ramp_baseline_is_deeper_at_top():
    d = ev.Baseline(M.ramp_depth, 8).predict(np.zeros((2, 3, 8, 8), np.float32))
    assert d.shape == (2, 1, 8, 8)
    assert d[0, 0, 0, 0] == 2.0 and d[0, 0, -1, 0] == 1.0  # floor near (bottom), top twice as far
    assert np.all(np.diff(d[0, 0, :, 0]) < 0) and np.all(d[0, 0] == d[0, 0, :, :1])


# ---------------------------------------------------------------------------------------------
# Planarity
# ---------------------------------------------------------------------------------------------

H, W = 60, 80
K = np.array([[70.0, 0.0, 39.5], [0.0, 70.0, 29.5], [0.0, 0.0, 1.0]])


def render_plane(normal, point, K=K, shape=(H, W)):
    """Planar depth z of the plane n . X = n . p0 along each pixel ray r = ((u-cx)/fx, (v-cy)/fy, 1)."""
    v, u = np.mgrid[0:shape[0], 0:shape[1]]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(shape)], -1)
    return float(np.dot(normal, point)) / (rays @ np.asarray(normal, float))


def tilt(normal, degrees):
    """normal turned by exactly `degrees` (Rodrigues rotation about an axis perpendicular to it)."""
    axis = np.cross(normal, [0.0, 1.0, 0.0])
    axis /= np.linalg.norm(axis)
    a = math.radians(degrees)
    return normal * math.cos(a) + np.cross(axis, normal) * math.sin(a) + axis * (axis @ normal) * (1 - math.cos(a))


N_GT = np.array([0.2, -0.3, -1.0]) / np.linalg.norm([0.2, -0.3, -1.0])  # faces the camera
P0 = np.array([0.0, 0.0, 3.0])


def test_backproject_and_plane_fit_recover_the_plane():
    gt = render_plane(N_GT, P0)
    points = ev.backproject(gt, K).reshape(-1, 3)
    normal, offset = ev.fit_plane_pca(points)
    assert ev.angle_between(normal, N_GT) == pytest.approx(0, abs=1e-6) or \
        ev.angle_between(-normal, N_GT) == pytest.approx(0, abs=1e-6)
    np.testing.assert_allclose(points @ normal + offset, 0, atol=1e-9)


def test_exact_plane_gives_zero_planarity_errors():
    gt = render_plane(N_GT, P0)
    pred = 0.37 * gt  # any scale: the plane error rescales by medians inside the plane
    [(fla, ori)] = ev.planarity_errors(pred, gt, [(np.ones_like(gt, bool), N_GT)], K)
    assert fla == pytest.approx(0, abs=1e-6) and ori == pytest.approx(0, abs=1e-5)
    [(fla, ori)] = ev.planarity_errors(pred, gt, [(np.ones_like(gt, bool), -N_GT)], K)  # sign-matched
    assert ori == pytest.approx(0, abs=1e-5)


def test_tilted_prediction_gives_its_tilt_as_pe_ori():
    gt = render_plane(N_GT, P0)
    pred = render_plane(tilt(N_GT, 7.0), P0)
    [(fla, ori)] = ev.planarity_errors(pred, gt, [(np.ones_like(gt, bool), N_GT)], K)
    assert ori == pytest.approx(7.0, abs=1e-6)
    assert fla == pytest.approx(0, abs=1e-6)


def test_noise_along_normal_gives_pe_fla_of_its_std_in_cm():
    sigma = 0.02  # metres -> expect 2 cm
    gt = np.full((H, W), 3.0)  # frontal plane z = 3: its normal is the z axis, so depth noise
    noise = np.random.default_rng(0).normal(0, sigma, (H, W))  # is noise along the normal
    [(fla, ori)] = ev.planarity_errors(gt + noise, gt, [(np.ones((H, W), bool), np.array([0, 0, 1.0]))], K)
    assert fla == pytest.approx(100 * sigma, rel=0.03)
    assert ori < 1.0


def test_small_planes_are_left_out_and_missing_normal_uses_gt_fit():
    gt = render_plane(N_GT, P0)
    small = np.zeros((H, W), bool)
    small[:5, :40] = True  # 200 px = 4.2% < 5%
    assert ev.planarity_errors(gt, gt, [(small, N_GT)], K) == []
    pred = render_plane(tilt(N_GT, 4.0), P0)
    [(_, ori)] = ev.planarity_errors(pred, gt, [(np.ones((H, W), bool), None)], K)
    assert ori == pytest.approx(4.0, abs=1e-6)


def test_camera_frame_matches_official_ibims_convention():
    # The official script back-projects with 1-based pixels into (x right, y forward, z up):
    # X = (c - cx) d / fx, Y = d, Z = -(r - cy) d / fy. Our reader shifts cx, cy by -1 and maps
    # the iBims normal into camera coordinates; the angle must come out the same.
    fx, fy, cx1, cy1 = 70.0, 72.0, 41.0, 30.0
    K0 = np.array([[fx, 0, cx1 - 1], [0, fy, cy1 - 1], [0, 0, 1.0]])
    gt = render_plane(N_GT, P0, K0)
    pred = render_plane(tilt(N_GT, 3.0) + np.array([0, 0.05, 0]), P0, K0)
    r, c = np.mgrid[1:H + 1, 1:W + 1]
    pts = np.stack([(c - cx1) * pred / fx, pred, -(r - cy1) * pred / fy], -1).reshape(-1, 3)
    n_official = np.linalg.svd(pts - pts.mean(0))[2][-1]
    n_gt_ibims = np.array([N_GT[0], N_GT[2], -N_GT[1]])  # camera (a, b, c) -> iBims (a, c, -b)
    if n_official @ n_gt_ibims < 0:
        n_official = -n_official
    official = ev.angle_between(n_gt_ibims, n_official)
    [(_, ori)] = ev.planarity_errors(pred, gt, [(np.ones((H, W), bool),
                                                 ev.ibims_normal_to_camera(n_gt_ibims))], K0)
    assert ori == pytest.approx(official, abs=1e-6) and ori > 1.0


# ---------------------------------------------------------------------------------------------
# Readers on tiny fixtures in each dataset's published layout
# ---------------------------------------------------------------------------------------------

def write_rgb(path, rgb_u8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_u8).save(path)


def write_u16(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)


def test_nyuv2_reader(tmp_path):
    import h5py
    import scipy.io

    rng = np.random.default_rng(0)
    n, h, w = 5, 12, 16
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    raw = rng.uniform(0.5, 9.0, (n, h, w)).astype(np.float32)
    raw[:, 0, 0] = 0.0  # missing measurement
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "w") as f:
        # MATLAB column-major storage: h5py sees (N, 3, W, H) and (N, W, H)
        f["images"] = images.transpose(0, 3, 2, 1)
        f["rawDepths"] = raw.transpose(0, 2, 1)
        f["depths"] = (raw + 1).transpose(0, 2, 1)
    splits = {"testNdxs": np.array([[2], [5]]), "trainNdxs": np.array([[1], [3], [4]])}  # 1-based
    scipy.io.savemat(tmp_path / "splits.mat", splits)  # MATLAB v5, like the real splits.mat
    samples = list(ev.read_nyuv2(tmp_path))
    assert [s["name"] for s in samples] == ["nyu_0002", "nyu_0005"]
    s = samples[0]
    assert s["image"].shape == (h, w, 3) and s["image"].dtype == np.float32
    np.testing.assert_allclose(s["image"], images[1] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(s["depth"], raw[1])
    assert not s["valid"][0, 0] and s["valid"][1:, 1:].all()
    filled = list(ev.read_nyuv2(tmp_path, depth_key="depths"))
    np.testing.assert_allclose(filled[1]["depth"], raw[4] + 1)
    assert len(list(ev.read_nyuv2(tmp_path, split="train"))) == 3


IB_H, IB_W = 48, 64
IB_K0 = np.array([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1.0]])  # 0-based
IB_NORMAL = np.array([0.25, -0.1, -1.0]) / np.linalg.norm([0.25, -0.1, -1.0])


def make_ibims(root, names=("corridor_01", "office_02")):
    """iBims-1 core_raw layout with a planar wall over the right 3/4 of each image."""
    depth = render_plane(IB_NORMAL, np.array([0, 0, 4.0]), IB_K0, (IB_H, IB_W))
    depth[:, :8] = 1.5  # a box in front of the wall, not part of the plane
    root.mkdir(parents=True, exist_ok=True)
    (root / "imagelist.txt").write_text("\n".join(names) + "\n")
    for name in names:
        write_rgb(root / "rgb" / f"{name}.png", np.full((IB_H, IB_W, 3), 128, np.uint8))
        write_u16(root / "depth" / f"{name}.png", np.round(depth / 50.0 * 65535))
        invalid = np.full((IB_H, IB_W), 255, np.uint8)
        invalid[:2] = 0  # nonzero = usable
        transp = np.full((IB_H, IB_W), 255, np.uint8)
        transp[-3:] = 0
        labels = np.zeros((IB_H, IB_W), np.uint8)
        labels[:, 16:] = 1  # plane 1 of this kind
        for folder, mask in (("mask_invalid", invalid), ("mask_transp", transp), ("mask_wall", labels)):
            (root / folder).mkdir(exist_ok=True)
            Image.fromarray(mask).save(root / folder / f"{name}.png")
        (root / "calib").mkdir(exist_ok=True)
        (root / "calib" / f"{name}.txt").write_text("60.0,60.0,32.5,24.5\n")  # 1-based cx, cy
        a, b, c = IB_NORMAL  # camera frame -> iBims frame (x right, y forward, z up)
        (root / "mask_wall" / f"{name}.txt").write_text(f"0.1,0.2,0.3,4.0,{a},{c},{-b}\n")
    return depth


def test_ibims1_reader(tmp_path):
    depth = make_ibims(tmp_path / "ibims1_core_raw")
    samples = list(ev.read_ibims1(tmp_path / "ibims1_core_raw"))
    assert [s["name"] for s in samples] == ["corridor_01", "office_02"]
    s = samples[0]
    np.testing.assert_allclose(s["depth"], depth, atol=50 / 65535)
    assert s["image"].shape == (IB_H, IB_W, 3)
    assert not s["valid"][:2].any() and not s["valid"][-3:].any() and s["valid"][5, 5]
    np.testing.assert_allclose(s["K"], IB_K0)
    [plane] = s["planes"]
    assert plane["kind"] == "wall" and plane["mask"][:, 16:].all() and not plane["mask"][:, :16].any()
    np.testing.assert_allclose(plane["normal"], IB_NORMAL, atol=1e-12)


def test_ibims1_end_to_end_with_oracle_gives_zero_errors(tmp_path):
    make_ibims(tmp_path)

    def oracle(images):  # images come at GT size here, so the oracle can return GT itself
        return np.stack([s["depth"][None] / 10.0 for s in oracle.samples[:len(images)]])

    for protocol in ("depthart", "marigold"):
        oracle.samples = list(ev.read_ibims1(tmp_path))
        result = ev.evaluate_dataset(iter(oracle.samples), oracle, protocol, "ibims1", (IB_H, IB_W), batch_size=2)
        m = result["metrics"]
        assert result["n_images"] == 2 and result["n_planes"] == 2
        assert m["abs_rel"] < 1e-5 and m["delta1"] == 1.0 and m["bad_d1"] == 0.0
        # GT is stored in 16-bit steps of 50/65535 m = 0.076 cm: rounding alone leaves a plane
        # roughness of about 0.076 / sqrt(12) = 0.022 cm.
        assert m["pe_fla"] < 0.04 and m["pe_ori"] < 0.05


def write_eth3d_depth(path, depth):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(depth, dtype="<f4").tofile(path)


def test_eth3d_reader_both_layouts(tmp_path):
    shape = (12, 18)
    depth = np.linspace(1, 80, shape[0] * shape[1], dtype=np.float32).reshape(shape)
    depth[0, :3] = np.inf
    rgb = np.full((*shape, 3), 200, np.uint8)
    # official: SCENE/images/dslr_images + SCENE/ground_truth_depth/dslr_images
    write_rgb(tmp_path / "office" / "images" / "dslr_images" / "DSC_0001.JPG", rgb)
    write_eth3d_depth(tmp_path / "office" / "ground_truth_depth" / "dslr_images" / "DSC_0001.JPG", depth)
    write_eth3d_depth(tmp_path / "office" / "ground_truth_depth" / "dslr_images" / "DSC_0002.JPG", depth)  # no image
    write_rgb(tmp_path / "office" / "images" / "dslr_images" / "DSC_0003.JPG", rgb)
    write_eth3d_depth(tmp_path / "office" / "ground_truth_depth" / "dslr_images" / "DSC_0003.JPG", depth[:-1])
    # Marigold's eth3d.tar: rgb/SCENE/images/dslr_images + depth/SCENE_dslr_depth/SCENE/ground_truth_depth/...
    write_rgb(tmp_path / "rgb" / "pipes" / "images" / "dslr_images" / "DSC_0100.JPG", rgb)
    write_eth3d_depth(tmp_path / "depth" / "pipes_dslr_depth" / "pipes" / "ground_truth_depth" / "dslr_images"
                      / "DSC_0100.JPG", depth)
    samples = list(ev.read_eth3d(tmp_path, shape=shape))
    by_name = {s["name"]: s for s in samples}
    assert set(by_name) == {"office/DSC_0001.JPG", "office/DSC_0002.JPG", "office/DSC_0003.JPG", "pipes/DSC_0100.JPG"}
    assert by_name["office/DSC_0002.JPG"]["skip"] == ev.SKIP_MISSING
    assert by_name["office/DSC_0003.JPG"]["skip"] == ev.SKIP_SIZE
    s = by_name["pipes/DSC_0100.JPG"]
    np.testing.assert_array_equal(s["depth"], depth)
    assert not s["valid"][0, :3].any() and s["valid"][1:].all()
    assert s["image"].shape == (*shape, 3)
    # DepthART keeps depth <= 72 m; Marigold everything finite
    d_mask = ev.evaluation_mask(s["depth"], s["valid"], ev.DEPTHART.datasets["eth3d"])
    m_mask = ev.evaluation_mask(s["depth"], s["valid"], ev.MARIGOLD.datasets["eth3d"])
    assert d_mask.sum() == (depth[np.isfinite(depth)] <= 72).sum() and m_mask.sum() == s["valid"].sum()


def make_tum(seq):
    """TUM RGB-D sequence: rgb at 10.00/.10/.20/.30 s, depth at 10.01/.115/.26/.29 s."""
    rgb_t = ["10.000000", "10.100000", "10.200000", "10.300000"]
    depth_t = ["10.010000", "10.115000", "10.260000", "10.290000"]
    header = "# color images\n# file: 'rgbd_dataset_freiburg1_xyz.bag'\n# timestamp filename\n"
    (seq / "rgb").mkdir(parents=True)
    (seq / "depth").mkdir()
    (seq / "rgb.txt").write_text(header + "".join(f"{t} rgb/{t}.png\n" for t in rgb_t))
    (seq / "depth.txt").write_text(header.replace("color", "depth") + "".join(f"{t} depth/{t}.png\n" for t in depth_t))
    rng = np.random.default_rng(1)
    for t in rgb_t:
        write_rgb(seq / "rgb" / f"{t}.png", rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    for i, t in enumerate(depth_t):
        d = np.full((24, 32), 5000 * (1.0 + i))
        d[:, :4] = 0  # missing
        d[0, 4:] = np.arange(28) * 5000  # up to 27 m: out of range beyond 10 m
        write_u16(seq / "depth" / f"{t}.png", d)
    return rgb_t, depth_t


def test_associate_timestamps_greedy_nearest():
    assert ev.associate_timestamps([0.0, 0.015], [0.01]) == [(0.015, 0.01)]
    assert ev.associate_timestamps([0.0], [0.03]) == []


def test_tum_reader(tmp_path):
    seq = tmp_path / "rgbd_dataset_freiburg1_xyz"
    make_tum(seq)
    for root in (seq, tmp_path):  # one sequence, or a folder of sequences
        samples = list(ev.read_tum(root))
        assert [s["name"] for s in samples] == [f"rgbd_dataset_freiburg1_xyz/{t}" for t in
                                                ("10.000000", "10.100000", "10.300000")]
    s = samples[2]  # rgb 10.30 paired with depth 10.29 (the 4th depth map: 4 m)
    assert s["depth"][5, 10] == pytest.approx(4.0)
    assert not s["valid"][:, :4].any() and s["valid"][1:, 4:].all()
    assert s["image"].shape == (24, 32, 3)


# ---------------------------------------------------------------------------------------------
# Skips: counted by reason, never averaged in as zeros
# ---------------------------------------------------------------------------------------------

def test_missing_mismatched_and_empty_samples_are_counted_and_excluded(tmp_path):
    gt, valid = _scene(4, shape=(16, 16))
    good = {"name": "good", "image": np.full((16, 16, 3), 0.5, np.float32), "depth": gt, "valid": valid}
    samples = [
        {"name": "gone", "skip": ev.SKIP_MISSING},
        {"name": "mismatch", "image": np.zeros((16, 17, 3), np.float32), "depth": gt, "valid": valid},
        {"name": "empty", "image": good["image"], "depth": np.zeros_like(gt), "valid": valid},
        {"name": "too far", "image": good["image"], "depth": gt + 100.0, "valid": valid},  # beyond 10 m
        good,
    ]
    ramp = ev.Baseline(M.ramp_depth, 8)
    result = ev.evaluate_dataset(samples, ramp, "depthart", "tum", 8, batch_size=2)
    alone = ev.evaluate_dataset([good], ramp, "depthart", "tum", 8)
    assert result["n_images"] == 1
    assert result["skipped"] == {ev.SKIP_MISSING: 1, ev.SKIP_SIZE: 1, ev.SKIP_EMPTY: 2}
    assert result["metrics"] == alone["metrics"]
    assert result["metrics"]["abs_rel"] > 0

    # A missing file inside a real layout becomes a counted skip too.
    make_ibims(tmp_path, names=("a", "b"))
    (tmp_path / "depth" / "b.png").unlink()
    result = ev.evaluate_dataset(ev.read_ibims1(tmp_path), ramp, "marigold", "ibims1", 8)
    assert result["n_images"] == 1 and result["skipped"] == {ev.SKIP_MISSING: 1}


def test_non_finite_prediction_is_skipped():
    gt, valid = _scene(5, shape=(8, 8))
    sample = {"name": "s", "image": np.zeros((8, 8, 3), np.float32), "depth": gt, "valid": valid}
    result = ev.evaluate_dataset([sample], lambda x: np.full((1, 1, 8, 8), np.nan, np.float32),
                                 "marigold", "synthetic", 8)
    assert result["n_images"] == 0 and result["skipped"] == {ev.SKIP_NONFINITE: 1}
    assert math.isnan(result["metrics"]["abs_rel"])


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def test_cli_const_on_tum_writes_json_and_csv(tmp_path, capsys):
    make_tum(tmp_path / "data" / "rgbd_dataset_freiburg1_xyz")
    prefix = tmp_path / "out" / "tum_const"
    result = ev.main(["--checkpoint", "const", "--dataset", "tum", "--data-root", str(tmp_path / "data"),
                      "--protocol", "marigold", "--out", str(prefix), "--input-size", "16", "--no-progress"])
    printed = capsys.readouterr().out
    assert "AbsRel" in printed and "bad d1" in printed and "skipped: 0" in printed
    saved = json.loads(Path(f"{prefix}.json").read_text())
    assert saved["n_images"] == 3 and saved["checkpoint"] == "const" and saved["protocol"] == "marigold"
    assert saved["metrics"]["abs_rel"] == pytest.approx(result["metrics"]["abs_rel"])
    assert len(saved["per_image"]) == 3
    rows = dict(line.split(",") for line in Path(f"{prefix}.csv").read_text().split())
    assert rows["n_images"] == "3" and float(rows["abs_rel"]) == pytest.approx(result["metrics"]["abs_rel"], abs=1e-6)


@pytest.fixture(scope="module", autouse=True)
def ramp_on_ibims(request, tmp_path_factory):
    """evaluate.py's command line in a fresh interpreter, from another folder, on an iBims-1 layout missing one
    image, started as this module begins (where its test is selected): it imports torch on one core while the
    tests here run on the other, and test_cli_subprocess_ramp_on_ibims reads the result. -> (Started, folder)"""
    if not selected(request, "test_cli_subprocess_ramp_on_ibims"):
        yield None
        return
    tmp_path = tmp_path_factory.mktemp("ramp_on_ibims")
    make_ibims(tmp_path / "ibims")
    (tmp_path / "ibims" / "rgb" / "office_02.png").unlink()
    run = Started([sys.executable, str(ROOT / "evaluate.py"), "--checkpoint", "ramp", "--dataset", "ibims1",
                   "--data-root", str(tmp_path / "ibims"), "--input-size", "32", "--out", str(tmp_path / "r"),
                   "--no-progress"], cwd=tmp_path)
    yield run, tmp_path
    run.stop()


def test_cli_subprocess_ramp_on_ibims(ramp_on_ibims):
    run, tmp_path = ramp_on_ibims
    proc = run.result()
    assert proc.returncode == 0, proc.stderr
    assert "pe-fla" in proc.stdout and "missing file: 1" in proc.stdout
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["n_images"] == 1 and saved["n_planes"] == 1 and saved["skipped"] == {"missing file": 1}


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors does not exist"):
        ev.load_predictor(str(tmp_path / "model.safetensors"))


def test_hypersim_and_synthetic_go_through_data_make_dataset(monkeypatch):
    # data.py's interface: make_dataset(kind, split=, size=, root=) -> items of (C, H, W) tensors.

    import torch

    calls = []

    def make_dataset(kind, split, size, root):
        calls.append((kind, split, size, root))
        depth = torch.linspace(1, 5, 12 * 16).reshape(1, 12, 16)
        return [{"image": torch.rand(3, 12, 16), "depth": depth, "valid": depth > 2}] * 3

    monkeypatch.setattr(ev.data, "make_dataset", make_dataset)
    samples = list(ev.open_dataset("synthetic", None, split="val", size=16))
    assert calls == [("synthetic", "val", 16, None)]
    assert len(samples) == 3 and samples[0]["image"].shape == (12, 16, 3)
    assert samples[0]["depth"].shape == (12, 16) and samples[0]["valid"].dtype == bool
    root = str(Path(__file__).parent)  # any existing folder: make_dataset is faked
    result = ev.main(["--checkpoint", "ramp", "--dataset", "hypersim", "--data-root", root,
                      "--input-size", "8", "--limit", "2", "--no-progress"])
    assert calls[-1] == ("hypersim", "test", None, root) and result["n_images"] == 2


class FramesWithABadOne:
    """A HyperSim-like dataset: frame 1 cannot be read; __getitem__ substitutes the next frame (for training)."""

    def __init__(self):
        self.loaded = []

    def __len__(self):
        return 3

    def load(self, i):
        if i == 1:
            raise OSError("truncated HDF5 file")
        self.loaded.append(i)
        import torch
        depth = torch.full((1, 12, 16), 2.0 + i)
        return {"image": torch.rand(3, 12, 16), "depth": depth, "valid": depth > 0}

    def __getitem__(self, i):
        try:
            return self.load(i)
        except OSError:
            return self.load((i + 1) % 3)


def test_an_unreadable_hypersim_frame_is_skipped_and_counted_not_replaced(monkeypatch):
    monkeypatch.setattr(ev.data, "make_dataset", lambda kind, split, size, root: FramesWithABadOne())
    result = ev.evaluate_dataset(ev.open_dataset("hypersim", "/root", split="test"), ev.Baseline(M.ramp_depth),
                                 "depthart", "hypersim", 8)
    assert result["n_images"] == 2 and result["skipped"] == {ev.SKIP_UNREADABLE: 1}
    assert [r["name"] for r in result["per_image"]] == ["hypersim_test_00000", "hypersim_test_00002"]


def test_marigold_planarity_uses_the_raw_prediction_median_scaled_per_plane(tmp_path):
    make_ibims(tmp_path)
    samples = list(ev.read_ibims1(tmp_path))

    def affine(images):  # an affine function of the truth: least squares undoes it, per-plane scaling does not
        return np.stack([0.05 * s["depth"][None] + 0.3 for s in samples[:len(images)]])

    result = ev.evaluate_dataset(iter(samples), affine, "marigold", "ibims1", (IB_H, IB_W), batch_size=2)
    s = samples[0]
    mask = ev.evaluation_mask(s["depth"], s["valid"], ev.MARIGOLD.datasets["ibims1"])
    planes = [(p["mask"] & mask, p["normal"]) for p in s["planes"]]
    [(fla, ori)] = ev.planarity_errors(0.05 * s["depth"] + 0.3, s["depth"], planes, s["K"])  # the official way
    assert result["metrics"]["pe_fla"] == pytest.approx(fla) and result["metrics"]["pe_ori"] == pytest.approx(ori)
    [(fla_shifted, _)] = ev.planarity_errors(s["depth"], s["depth"], planes, s["K"])  # what the shifted one scores
    assert result["metrics"]["abs_rel"] < 1e-3 and fla > 3 * fla_shifted  # least squares hid the bent plane


CLI_MISTAKES = [
    (["--dataset", "nyuv2", "--data-root", "/no/such/dir"], "--data-root /no/such/dir: no such file or folder"),
    (["--dataset", "nyuv2"], "--data-root is required for nyuv2"),
    (["--dataset", "synthetic", "--out", "/proc/depthart-test/r"], "cannot create or write in /proc/depthart-test"),
    (["--dataset", "world", "--checkpoint", "no/model.safetensors"], "no/model.safetensors does not exist"),
]


@pytest.mark.parametrize("args, message", CLI_MISTAKES)
def test_cli_mistakes_are_one_line_from_any_directory(args, message, tmp_path, monkeypatch, capsys):
    """In-process from a folder of its own; a fresh interpreter's exit status is the subprocess tests' below."""
    monkeypatch.chdir(tmp_path)
    checkpoint = [] if "--checkpoint" in args else ["--checkpoint", "ramp"]
    with pytest.raises(SystemExit) as e:
        ev.main([*checkpoint, *args, "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("evaluate.py: error: "), lines
    assert message in lines[0]


def test_world_scenes_of_any_shape_padded_or_squashed():
    samples = list(ev.open_dataset("world", None, split="test", shape=(24, 40), family="box_room", length=2))
    assert samples[0]["image"].shape == (24, 40, 3) and samples[0]["name"].startswith("world_box_room_")
    for fit in ("squash", "pad"):
        result = ev.evaluate_dataset(iter(samples), ev.Baseline(M.ramp_depth, 16), "depthart", "world", 16, fit=fit)
        assert result["n_images"] == 2 and result["fit"] == fit


# ---------------------------------------------------------------------------------------------
# Ordinal check on real photographs (WHDR)

def test_whdr_by_hand():
    depth = np.array([[1.0, 2.0], [3.0, 3.0]])  # sampled at the nearest pixel of normalized (x, y)
    pairs = [{"a": [0.0, 0.0], "b": [0.9, 0.0], "nearer": "a"},   # 1 < 2: right
             {"a": [0.0, 0.0], "b": [0.9, 0.0], "nearer": "b"},   # wrong
             {"a": [0.0, 0.9], "b": [0.9, 0.9], "nearer": "a"},   # a tie counts as wrong
             {"a": [0.9, 0.9], "b": [0.9, 0.0], "nearer": "b"}]   # 2 < 3: right
    assert M.whdr(depth, pairs) == pytest.approx(0.5)
    assert M.whdr(np.full((2, 2), np.nan), pairs[:1]) == 1.0


def test_ordinal_pairs_are_real_photographs_never_textures():
    import scenes
    spec = json.loads(ev.ORDINAL_PAIRS.read_text())
    assert len(spec["images"]) >= 10
    for im in spec["images"]:
        path = ev.package_file(im["package"], im["file"])
        assert Image.open(path).size == (im["width"], im["height"])
        assert len(im["pairs"]) >= 20, im["file"]
        xy = np.array([p[k] for p in im["pairs"] for k in ("a", "b")])
        assert xy.min() >= 0.03 and xy.max() <= 0.97  # off the border
        assert {p["nearer"] for p in im["pairs"]} <= {"a", "b"}
        assert Path(im["file"]).stem not in scenes.TEXTURES


@pytest.mark.parametrize("fit", ["squash", "pad"])
def test_ordinal_check_scores_every_photograph(fit):
    # The ramp ("floor near, top far") taken back to the photograph's shape still grows strictly upwards,
    # so a pair is right exactly when its nearer point lies on a lower pixel row.
    result = ev.ordinal_check(ev.Baseline(M.ramp_depth, 32), 32, fit)
    spec = json.loads(ev.ORDINAL_PAIRS.read_text())
    assert [r["pairs"] for r in result["photos"]] == [len(im["pairs"]) for im in spec["images"]]
    for r, im in zip(result["photos"], spec["images"]):
        row = lambda xy: min(int(np.rint(xy[1] * im["height"])), im["height"] - 1)  # noqa: E731
        wrong = [row(p[p["nearer"]]) <= row(p["b" if p["nearer"] == "a" else "a"]) for p in im["pairs"]]
        assert r["whdr"] == pytest.approx(np.mean(wrong)), im["file"]
    assert 0 < result["whdr"] < 1


# ---------------------------------------------------------------------------------------------
# Surface normals: angular metrics worked by hand, the NYUv2 normals reader, the CLI.
# ---------------------------------------------------------------------------------------------

def _normals(*vectors):
    """(3, 1, N) normal map from N (x, y, z) vectors."""
    return np.array(vectors, dtype=np.float64).T[:, None, :]


def test_angular_metrics_by_hand():
    facing = _normals([0, 0, -1], [0, 0, -1], [0, 0, -1], [0, 0, -1])
    valid = np.ones((1, 4), bool)
    same = M.normal_metrics(facing, facing, valid)
    assert same == {"mean_angle": 0.0, "median_angle": 0.0, "within_11.25": 1.0, "within_22.5": 1.0, "within_30": 1.0}
    flipped = _normals([1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, -1])  # two 90-degree flips, two right
    r = M.normal_metrics(flipped, facing, valid)
    assert r["mean_angle"] == pytest.approx(45.0) and r["median_angle"] == pytest.approx(45.0)
    assert r["within_11.25"] == r["within_30"] == 0.5
    # a known tilt: 20 degrees about x (and unnormalized, which must not matter), and 180 degrees
    t = math.radians(20)
    tilted = _normals([0, math.sin(t), -math.cos(t)], [0, 3 * math.sin(t), -3 * math.cos(t)], [0, 0, 1], [0, 0, -1])
    e = M.angular_errors(tilted, facing, valid)
    np.testing.assert_allclose(e, [20, 20, 180, 0], atol=1e-9)
    r = M.normal_metrics(tilted, facing, valid)
    assert r["mean_angle"] == pytest.approx(55.0) and r["median_angle"] == pytest.approx(20.0)
    assert (r["within_11.25"], r["within_22.5"], r["within_30"]) == (0.25, 0.75, 0.75)
    # only valid pixels count; per image, then averaged over images
    valid_one = np.array([[False, False, True, False]])
    assert M.normal_metrics(tilted, facing, valid_one)["mean_angle"] == pytest.approx(180.0)
    both = M.mean_normal_metrics(np.stack([flipped, facing]), np.stack([facing, facing]), np.stack([valid, valid]))
    assert both["mean_angle"] == pytest.approx(22.5) and both["within_11.25"] == pytest.approx(0.75)
    assert M.facing_camera(2, 3).shape == (3, 2, 3) and (M.facing_camera(2, 3)[2] == -1).all()


def _write_nyu_normals(root, index, normal_ours_HW3, valid_HW):
    """One frame in DSINE's dsine_eval/nyuv2 layout: DSINE's normals are ours negated, 8-bit (n + 1) / 2."""
    test = root / "test"
    test.mkdir(parents=True, exist_ok=True)
    H, W = valid_HW.shape
    Image.fromarray(np.full((H, W, 3), 120, np.uint8)).save(test / f"{index:06d}_img.png")
    png = np.rint((-normal_ours_HW3 + 1) / 2 * 255).astype(np.uint8) * valid_HW[..., None]
    Image.fromarray(png).save(test / f"{index:06d}_normal.png")
    np.save(test / f"{index:06d}_intrins.npy", np.eye(3))


def test_nyuv2_normals_reader_in_dsine_layout(tmp_path):
    H, W = 6, 8
    n = np.zeros((H, W, 3))
    n[:3, :, 2] = -1.0  # a wall facing the camera
    n[3:, :, 1] = -1.0  # a floor
    valid = np.ones((H, W), bool)
    valid[0, 0] = False
    _write_nyu_normals(tmp_path, 0, n, valid)
    _write_nyu_normals(tmp_path, 8, n, np.ones((H, W), bool))
    (tmp_path / "test" / "000013_img.png").write_bytes(b"")  # a listed frame without its normal PNG
    samples = list(ev.read_nyuv2_normals(tmp_path))
    assert [s["name"] for s in samples] == ["nyu_normals_000000", "nyu_normals_000008", "nyu_normals_000013"]
    assert samples[2]["skip"] in (ev.SKIP_MISSING, ev.SKIP_UNREADABLE)
    s = samples[0]
    assert s["image"].shape == (H, W, 3) and s["normals"].shape == (H, W, 3) and not s["valid"][0, 0] and s["valid"].sum() == 47
    np.testing.assert_allclose(s["normals"][1, 1], [0, 0, -1], atol=1e-2)
    np.testing.assert_allclose(s["normals"][4, 1], [0, -1, 0], atol=1e-2)
    np.testing.assert_allclose(np.linalg.norm(s["normals"][s["valid"]], axis=-1), 1, atol=1e-6)
    # the facing-the-camera predictor: 0 degrees on the wall, 90 on the floor
    result = ev.main(["--checkpoint", "facing", "--dataset", "nyuv2-normals", "--data-root", str(tmp_path),
                      "--input-size", "8", "--no-progress"])
    assert result["n_images"] == 2 and sum(result["skipped"].values()) == 1
    assert result["metrics"]["within_11.25"] == pytest.approx((23 / 47 + 24 / 48) / 2, abs=1e-6)
    assert result["metrics"]["mean_angle"] == pytest.approx((24 * 90 / 47 + 24 * 90 / 48) / 2, abs=1.0)  # 8-bit PNGs


def test_normals_and_depth_datasets_do_not_mix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ev.main(["--checkpoint", "facing", "--dataset", "synthetic", "--no-progress"])
    assert "must be one with normals" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ev.main(["--checkpoint", "const", "--dataset", "nyuv2-normals", "--data-root", str(tmp_path), "--no-progress"])
    assert "scores normals" in capsys.readouterr().err


def test_facing_baseline_on_world_normals():
    result = ev.main(["--checkpoint", "facing", "--dataset", "world", "--limit", "3", "--input-size", "32",
                      "--scene-shape", "32", "48", "--no-progress"])
    assert result["n_images"] == 3 and 0 < result["metrics"]["mean_angle"] < 180


# ---------------------------------------------------------------------------------------------
# The real set (realset.py's layout): reader, both protocols, the CLI with the tiny model.
# ---------------------------------------------------------------------------------------------

TINY = ROOT / "weights" / "depthart_tiny.safetensors"


def write_real_frame(root, name, kind, target, source="fake", image=None):
    folder = root / name
    folder.mkdir(parents=True)
    h, w = target.shape
    if image is None:
        image = (np.random.default_rng(len(name)).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(folder / "image.png")
    np.save(folder / ("depth.npy" if kind == "metric" else "disparity.npy"), target.astype(np.float32))
    (folder / "meta.json").write_text(json.dumps({"source": source, "kind": kind, "licence": "test"}))


def fake_real_set(root):
    """Two metric frames of two sources (a tilted floor, a box in front of a wall; holes = 0) and one disparity frame."""
    v = np.linspace(0, 1, 30)[:, None] * np.ones((1, 44))
    floor = (1.0 + 3.0 * (1 - v)).astype(np.float32)
    floor[:3, :5] = 0.0
    box = np.full((30, 44), 4.0, np.float32)
    box[10:22, 12:30] = 1.5
    write_real_frame(root, "a_floor", "metric", floor, source="rooms")
    write_real_frame(root, "b_box", "metric", box, source="tabletop")
    write_real_frame(root, "c_stereo", "disparity_only", 20.0 / box, source="stereo")
    return root


def test_real_reader_reads_the_layout_back(tmp_path):
    samples = list(ev.read_real(fake_real_set(tmp_path)))
    assert [s["name"] for s in samples] == ["a_floor", "b_box", "c_stereo"]
    assert [s["kind"] for s in samples] == ["metric", "metric", "disparity_only"]
    floor = samples[0]
    assert floor["image"].shape == (30, 44, 3) and floor["image"].dtype == np.float32 and floor["image"].max() <= 1
    assert floor["valid"].sum() == 30 * 44 - 15 and not floor["valid"][:3, :5].any()
    assert samples[2]["target"].max() == pytest.approx(20.0 / 1.5)


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no FRAME/meta.json inside"),
    (lambda d: (d / "f").mkdir() or (d / "f" / "meta.json").write_text('{"source": "s", "kind": "sparse"}'),
     "needs \"source\" and \"kind\""),
])
def test_real_set_bad_layout_is_one_line(tmp_path, setup, message, capsys):
    setup(tmp_path)  # in this process: test_cli_subprocess_ramp_on_ibims runs the command line from another folder
    with pytest.raises(SystemExit) as end:
        ev.main(["--checkpoint", "ramp", "--dataset", "real", "--data-root", str(tmp_path), "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert end.value.code == 2 and len(lines) == 1 and message in lines[0], lines


def test_affine_inverse_alignment_recovers_a_known_affine_map():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 5.0, (20, 30))
    valid = rng.random((20, 30)) > 0.2
    pred = rng.uniform(0.1, 1.0, (20, 30))  # relative depth; the truth's inverse is an affine map of its inverse
    target_inverse = 0.3 / pred + 0.05
    aligned = ev.align_affine_inverse(pred, target_inverse, valid)
    assert np.allclose(aligned[valid], target_inverse[valid], rtol=1e-5)
    # a prediction proportional to the depth scores zero under both protocols; a shifted one only under the affine fit
    sample = {"kind": "metric", "target": depth.astype(np.float32), "valid": valid}
    exact = ev.score_real_frame(depth / depth.max(), sample)
    assert exact["depthart"]["abs_rel"] < 1e-6 and exact["affine"]["abs_rel"] < 1e-5
    shifted = ev.score_real_frame(1.0 / (1.0 / depth + 0.5), sample)
    assert shifted["affine"]["abs_rel"] < 1e-5 and shifted["depthart"]["abs_rel"] > 0.05


def test_affine_alignment_is_clipped_at_the_farthest_true_depth():
    depth = np.array([[1.0, 2.0, 4.0, 8.0]])
    valid = np.ones_like(depth, bool)
    pred = np.array([[0.2, 0.3, 1.0, 1.0]])  # a fit that would put some pixels beyond the farthest truth
    aligned = ev.align_affine_inverse(pred, 1.0 / depth, valid)
    assert aligned.min() >= 1.0 / 8.0 - 1e-12


def test_real_disparity_frames_get_only_the_affine_protocol_in_disparity_space():
    disparity = np.array([[10.0, 20.0], [40.0, 0.0]])
    sample = {"kind": "disparity_only", "target": disparity, "valid": disparity > 0}
    scores = ev.score_real_frame(1.0 / np.where(disparity > 0, disparity, 1.0), sample)  # depth = 1 / disparity
    assert scores["depthart"] is None and scores["affine"]["abs_rel"] < 1e-6


def test_cli_real_with_the_tiny_model_prints_frames_and_both_protocols(tmp_path, capsys):
    root = fake_real_set(tmp_path / "real")
    result = ev.main(["--checkpoint", str(TINY), "--dataset", "real", "--data-root", str(root),
                      "--out", str(tmp_path / "out" / "tiny"), "--no-progress"])
    out = capsys.readouterr().out
    assert result["fit"] == "pad"  # real photographs default to the ordinal check's fit
    for name in ("a_floor", "b_box", "c_stereo", "mean all metric", "mean all disparity_only", "mean rooms"):
        assert name in out
    saved = json.loads((tmp_path / "out" / "tiny.json").read_text())
    frames = {f["name"]: f for f in saved["frames"]}
    assert frames["c_stereo"]["model"]["depthart"] is None
    for f in ("a_floor", "b_box"):
        for predictor in ("model", "ramp", "const"):
            assert 0 <= frames[f][predictor]["depthart"]["abs_rel"] < 10 and 0 <= frames[f][predictor]["affine"]["delta1"] <= 1
    means = saved["means"]
    assert means["model"]["depthart"]["all metric"]["n"] == 2 and means["model"]["affine"]["all disparity_only"]["n"] == 1
    assert means["ramp"]["depthart"]["all metric"]["abs_rel"] == pytest.approx(
        np.mean([frames[f]["ramp"]["depthart"]["abs_rel"] for f in ("a_floor", "b_box")]))
    # the tilted floor is a ramp: under the affine fit in inverse depth the ramp baseline beats the constant there
    assert frames["a_floor"]["ramp"]["affine"]["abs_rel"] < frames["a_floor"]["const"]["affine"]["abs_rel"]
