"""realset.py: stereo pseudo-depth with the left-right check, the calibration conversion, Middlebury's file formats,
the 7-Scenes edge registration, and reading pinned files out of a clone. Synthetic inputs only (no fetched data)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import realset as R  # noqa: E402

cv2 = pytest.importorskip("cv2")


def texture(h, w, seed):
    """A random texture with structure at a few pixels' scale, RGB uint8 (what SGBM can match)."""
    noise = np.random.default_rng(seed).random((h, w, 3))
    return (255 * np.clip(ndimage.gaussian_filter(noise, (1.2, 1.2, 0)) * 2.5 - 0.75, 0, 1)).astype(np.uint8)


def stereo_pair(h=120, w=200, d_back=8, d_box=20, box=(30, 90, 80, 140)):
    """A rectified pair of a fronto-parallel wall (disparity d_back) and a box in front of it (d_box): the right
    view sees a scene point of disparity d at column x - d. Returns left, right and the left view's disparity."""
    wall, front = texture(h, w + 64, 1), texture(h, w + 64, 2)
    top, bottom, left_c, right_c = box
    x = np.arange(w)
    true = np.full((h, w), float(d_back))
    true[top:bottom, left_c:right_c] = d_box
    left = wall[:, x + 32].copy()
    left[top:bottom, left_c:right_c] = front[top:bottom, left_c + 32:right_c + 32]
    right = wall[:, x + 32 + d_back].copy()  # right column x shows the scene point at left column x + d
    in_box = (x + d_box >= left_c) & (x + d_box < right_c)
    right[top:bottom, in_box] = front[top:bottom, x[in_box] + d_box + 32]
    return left, right, true


def test_sgbm_with_left_right_check_recovers_known_depth_on_confident_pixels():
    left, right, true = stereo_pair()
    disp = R.stereo_disparity(left, right, num_disp=32)
    confident = disp > 0
    assert confident.mean() > 0.6
    err = np.abs(disp[confident] - true[confident])
    assert np.mean(err <= 1.0) > 0.97
    # the band of wall that the box hides from the right view (left of the box, d_box - d_back wide) fails the check
    occluded = np.zeros_like(confident)
    occluded[35:85, 80 - 12 + 2:80 - 2] = True
    assert confident[occluded].mean() < 0.2
    # depth = f B / (d + doffs), as Middlebury's calib.txt defines it
    f, baseline, doffs = 1000.0, 0.2, 4.0
    depth = R.disparity_to_depth(disp, f, baseline, doffs)
    true_depth = f * baseline / (true + doffs)
    rel = np.abs(depth[confident] - true_depth[confident]) / true_depth[confident]
    assert np.median(rel) < 0.02 and np.all(depth[~confident] == 0)


def test_pfm_and_calib_read_as_middlebury_writes_them():
    data = np.arange(12, dtype="<f4").reshape(3, 4)
    data[0, 0] = np.inf
    raw = b"Pf\n4 3\n-1.0\n" + data[::-1].tobytes()  # rows bottom to top, little-endian (negative scale)
    back = R.read_pfm(raw)
    assert back.shape == (3, 4) and np.isinf(back[0, 0]) and back[2, 3] == 11
    calib = R.parse_calib("cam0=[ 999.421 0 294.182 ; 0 999.421 252.932 ; 0 0 1 ] \n doffs= 32.778 \nbaseline= 193.001\n")
    assert calib["cam0"][0, 0] == 999.421 and calib["cam0"][1, 2] == 252.932
    assert calib["doffs"] == 32.778 and calib["baseline"] == 193.001


def test_edge_registration_recovers_a_known_scale_and_shift():
    h, w, frames = 480, 640, []
    rng = np.random.default_rng(0)
    true_scale, true_dx, true_dy = 0.92, -6, 3
    for _ in range(3):
        depth = np.full((h, w), 3.0)
        for _ in range(6):  # boxes at random places and depths
            t, l = rng.integers(40, 380), rng.integers(40, 520)
            depth[t:t + rng.integers(30, 90), l:l + rng.integers(30, 110)] = rng.uniform(0.8, 2.5)
        colour_depth = R.warp_depth(depth, true_scale, true_dx, true_dy)  # the scene as the colour camera sees it
        rgb = np.repeat((80 * colour_depth)[..., None], 3, axis=2)
        frames.append((R.image_gradient(rgb), R.depth_edges(depth)))
    reg = R.estimate_registration(frames, coarse=np.arange(0.86, 1.04, 0.02), max_shift=12)
    assert abs(reg["scale"] - true_scale) <= 0.0051 and abs(reg["dx"] - true_dx) <= 1 and abs(reg["dy"] - true_dy) <= 1
    assert reg["score_best"] > reg["score_identity"]


def test_repo_reads_a_pinned_file_from_a_clone_and_names_a_missing_one(tmp_path):
    repo = tmp_path / "r"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.txt").write_text("first")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["add", "a.txt"], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    pinned = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (repo / "a.txt").write_text("second")
    subprocess.run(git + ["commit", "-qam", "two"], check=True)
    clone = R.Repo(repo, "someone/r", pinned)
    assert clone.commit == pinned and clone.read("a.txt") == b"first"  # the pin, not HEAD
    with pytest.raises(R.RealSetError, match="no file b.txt"):
        clone.read("b.txt")
    with pytest.raises(R.RealSetError, match="no clone of someone/x"):
        R.Repo(tmp_path / "missing", "someone/x", pinned)


def test_cli_without_sources_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "realset.py"), "--out", str(tmp_path / "o"),
                           "--sources", str(tmp_path / "none")], capture_output=True, text=True, cwd="/")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "no such folder" in lines[0], proc.stderr
