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
from conftest import Started, selected  # noqa: E402

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


@pytest.fixture(scope="module", autouse=True)
def without_sources(request, tmp_path_factory):
    """realset.py's command line in a fresh interpreter, from another folder, with a sources folder that does not
    exist, started as this module begins (where its test is selected): it imports its modules on one core while
    the tests here run on the other; test_cli_without_sources_is_one_line reads the result."""
    if not selected(request, "test_cli_without_sources_is_one_line"):
        yield None
        return
    tmp_path = tmp_path_factory.mktemp("without_sources")
    run = Started([sys.executable, str(ROOT / "realset.py"), "--out", str(tmp_path / "o"),
                   "--sources", str(tmp_path / "none")], cwd="/")
    yield run
    run.stop()


def test_cli_without_sources_is_one_line(without_sources):
    proc = without_sources.result()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "no such folder" in lines[0], proc.stderr


def _git_repo(path: Path, files: dict) -> str:
    """A git repository at path holding files {relative path: bytes}; returns its commit."""
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "sets"], check=True)
    return subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def _encoded(rgb, fmt="PNG") -> bytes:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, quality=90)
    return buf.getvalue()


def test_textures_keep_photographs_and_leave_out_the_ordinal_check_repeats_and_other_sets(tmp_path):
    """realset.py textures on a repository laid out as denoising_datasets: power-of-two squares of at most 256 px,
    a manifest whose sha256s are the files', and left out, each with its reason: an ordinal photograph (resized and
    re-encoded as JPEG), a repeat in another set, a listed file and the sets that are not colour photographs."""
    import json
    from PIL import Image
    from data import package_file
    chelsea = Image.open(package_file("skimage", "data/chelsea.png")).convert("RGB")
    files = {"CBSD68/a.png": _encoded(texture(300, 200, 1)),  # a 128 square
             "CBSD68/b.jpg": _encoded(np.asarray(chelsea.resize((300, 200))), "JPEG"),  # the ordinal check's cat
             "CSet5/c.png": _encoded(texture(600, 520, 2)),  # 512, halved to 256
             "CSet14/a_again.png": _encoded(texture(300, 200, 1)),  # a repeat of CBSD68/a.png
             "CSet14/comic.png": _encoded(texture(64, 64, 3)),  # a listed file
             "CSun_Hays80/d.jpg": _encoded(texture(260, 280, 4), "JPEG"),
             "CUrban100/e.png": _encoded(texture(256, 300, 5)),
             "BSD68/a.png": _encoded(texture(300, 200, 1)[..., 0]),  # a grey set
             "README.md": b"sets"}
    commit = _git_repo(tmp_path / "denoising_datasets", files)
    repo = R.Repo(tmp_path / "denoising_datasets", "someone/denoising_datasets", commit)
    m = R.build_textures(tmp_path / "out", repo)
    assert [f["name"] for f in m["files"]] == ["CBSD68_a.png", "CSet5_c.png", "CSun_Hays80_d.png", "CUrban100_e.png"]
    assert [f["size"] for f in m["files"]] == [128, 256, 256, 256]
    for f in m["files"]:
        data = (tmp_path / "out" / f["name"]).read_bytes()
        assert R.hashlib.sha256(data).hexdigest() == f["sha256"]
        assert Image.open(tmp_path / "out" / f["name"]).size == (f["size"], f["size"])
    why = {e["path"]: e["why"] for e in m["excluded"]}
    assert "skimage/data/chelsea.png" in why["CBSD68/b.jpg"] and "CBSD68/a.png" in why["CSet14/a_again.png"]
    assert "painting" in why["CSet14/comic.png"] and set(why) == {"CBSD68/b.jpg", "CSet14/a_again.png", "CSet14/comic.png"}
    assert "grey" in m["excluded_sets"]["BSD68"] and m["commit"] == commit and m["photographs"] == 4
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == m
    (tmp_path / "out" / "stranger.png").write_bytes(files["CBSD68/a.png"])
    with pytest.raises(R.RealSetError, match="other pictures"):  # a folder the world would read more from
        R.build_textures(tmp_path / "out", repo)


def test_textures_cli_without_sources_is_one_line(tmp_path, capsys):
    # in this process (the command line's exit status from another folder: test_cli_without_sources_is_one_line)
    with pytest.raises(SystemExit) as end:
        R.main(["textures", "--out", str(tmp_path / "o"), "--sources", str(tmp_path / "none")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert end.value.code == 2 and len(lines) == 1 and "no such folder" in lines[0], lines
