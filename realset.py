"""Build the dense real validation set that `evaluate.py --dataset real` scores, from public git repositories.

    python realset.py --out DIR --sources CLONES [--clone] [--no-register] [--manifest docs/real/manifest.json]

CLONES holds one `git clone` per repository below, named after the repository (`CLONES/tsdf-fusion-python`, ...);
a bare git directory (`git clone --bare`) works too. `--clone` clones the missing ones from GitHub and checks out
the pinned commit. Every frame is read with `git show COMMIT:PATH` from the pinned commit (or from HEAD, recorded
in the manifest, when the clone lacks it), so the same clones give the same DIR, byte for byte.

Four sources (none of them grants a licence to redistribute its frames, so this repository commits the script and
the manifest, never the frames; docs/real/manifest.json lists repository, commit, paths and licence of each):

  7scenes     12 RGB-D frames, every 90th of the 1,000 frames of one Microsoft 7-Scenes sequence that
              github.com/andyzeng/tsdf-fusion-python ships in data/ (colour JPG 640x480, depth 16-bit PNG in mm,
              0 and 65535 = no measurement). The dataset page says colour and depth cameras are not calibrated
              to each other; we estimate one global scale and shift of the depth image that best lines its depth
              edges up with the colour image's edges (estimate_registration), apply it, and record it
              (--no-register builds the unregistered variant so its cost can be measured). kind: metric.
  middlebury  the 12 distinct scenes of Middlebury 2014's quarter-size training set (MiddEval3 trainingQ;
              MotorcycleE, PianoL and PlaytableP repeat a left view and ground truth and are left out), from
              github.com/Homay0118/DDL_demo, which keeps the official layout: trainingQ/SCENE/{im0,im1}.png,
              calib.txt, and MiddEval3GT/trainingQ/SCENE/disp0GT.pfm, the structured-light ground-truth
              disparity. Depth = f * baseline / (d + doffs) with the quarter-size calib.txt's own f and doffs.
              kind: metric (true ground truth, not stereo). (github.com/ccj5351/ccj5351.github.io's
              files/stereo-datasets/MiddleburyV3/trainingQ holds byte-identical im0/im1, without calib or GT.)
  lattermann  12 of the 57 rectified tabletop pairs of github.com/l-lattermann/Stereo-Dataset (every 5th by
              name), with its camera_parameters.txt (fx 1104.37 px at 1280x960, baseline 0.16005 m, and the
              README's z = fx * baseline / disparity, i.e. no disparity offset): StereoSGBM pseudo-depth on the
              half-size pair. kind: metric. Not built unless asked for (--only ... lattermann): the tables are
              white and nearly textureless, SGBM keeps 10-16% of the pixels and puts a flat tabletop at 0.7-150 m
              (q98 / q2 6-137, where the truth is about 1.1), so its "depth" is noise that no protocol can score.
  eth3d       12 of the 27 ETH3D two-view training pairs (every other by name) from
              github.com/ccj5351/ccj5351.github.io, files/stereo-datasets/ETH3D/two_view_training/image_{0,1}
              (rectified; that copy has no calib.txt): StereoSGBM disparity. kind: disparity_only.

Stereo pseudo-ground-truth (stereo_disparity): OpenCV's StereoSGBM on the rectified pair, run twice (left
reference, and right reference on the mirrored pair), keeping a pixel only if the two agree within 1 px
(|dL(x) - dR(x - dL(x))| <= 1), SGBM's uniqueness ratio and speckle filter pass it, and its disparity is positive.

Layout of DIR (what evaluate.py's reader expects; evaluate.read_real documents the same):

    DIR/manifest.json                   the frames and where they came from (as docs/real/manifest.json)
    DIR/FRAME/image.png                 8-bit RGB, long side <= 640
    DIR/FRAME/depth.npy                 float32 (H, W) metres, 0 = invalid           (kind "metric")
    DIR/FRAME/disparity.npy             float32 (H, W) pixels at this size, 0 = invalid (kind "disparity_only")
    DIR/FRAME/meta.json                 {"source", "kind", "licence", "repository", "commit", "paths", ...}

A build script of its own rather than a function in data.py: it needs OpenCV and git, which nothing else in the
repository needs, and it runs once per machine, not per training run.

Photo textures for the synthetic world (train.py --data world --textures DIR; scenes.PhotoTextures), from a clone of
github.com/majedelhelou/denoising_datasets (pinned like the sources above):

    python realset.py textures --out DIR --sources CLONES [--clone] [--manifest docs/textures/manifest.json]

writes the colour photographs of its CBSD68, CSet5, CSet14, CSun_Hays80 and CUrban100 folders, each centre-cropped to
its largest power-of-two square and box-filtered down to at most 256 x 256, as DIR/SET_NAME.png, and DIR/manifest.json
(repository, commit, licence, and per file its path and sha256). Left out, each with its reason in the manifest:
the grey copies and the manga covers, three CSet14 pictures (a painting, a book cover, 'Lena'), any picture that is
one of the ordinal check's photographs (docs/ordinal_pairs.json), and repeats (build_textures).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from data import package_file, read_image, resize, resize_nearest

try:
    import cv2
except ImportError:  # only the stereo sources need it; the error says how to get it where it is needed
    cv2 = None

MAX_SIDE = 640  # long side of every stored frame

# The repositories, at the commits the manifest was built from.
REPOS = {
    "tsdf-fusion-python": ("andyzeng/tsdf-fusion-python", "3f22a940d90f684145b1f29b1feaa92e09eb1db6"),
    "DDL_demo": ("Homay0118/DDL_demo", "69cc478b5634234646a1c06ec674be84e130493c"),
    "Stereo-Dataset": ("l-lattermann/Stereo-Dataset", "29f66e7a75f10bac563284ed150e2810f2e63b2e"),
    "ccj5351.github.io": ("ccj5351/ccj5351.github.io", "34f515936a401a585a307494e9237cf1a3aa6fd5"),
    "denoising_datasets": ("majedelhelou/denoising_datasets", "58234876fef6f1b56306705c78dfd40cdb837b86"),  # textures
}

# What each source's owners say about use, with where they say it. None is an open licence for redistribution.
LICENCES = {
    "7scenes": "Microsoft Research 7-Scenes: non-commercial use only (licence on "
               "https://www.microsoft.com/en-us/research/project/rgb-d-dataset-7-scenes/); the redistributing "
               "repository's BSD-2-Clause LICENSE covers its code",
    "middlebury": "Middlebury 2014 stereo (Scharstein et al., GCPR 2014, https://vision.middlebury.edu/stereo/data/): "
                  "published for research, cite the paper; no open licence. The redistributing repository has no "
                  "licence file (its README: academic use only)",
    "lattermann": "no licence stated in the repository (README, no LICENSE file): all rights reserved",
    "eth3d": "ETH3D (Schoeps et al., CVPR 2017, https://www.eth3d.net): CC BY-NC-SA 4.0; the redistributing "
             "repository has no licence file",
}

SEVENSCENES_FRAMES = list(range(0, 1000, 90))  # 12 frames, 3 s apart at 30 Hz: a spread, not neighbours
SEVENSCENES_K = (585.0, 585.0, 320.0, 240.0)  # the dataset page's default depth intrinsics (also data/camera-intrinsics.txt)
MIDDLEBURY_SCENES = ["Adirondack", "ArtL", "Jadeplant", "Motorcycle", "Piano", "Pipes", "Playroom", "Playtable",
                     "Recycle", "Shelves", "Teddy", "Vintage"]


class RealSetError(RuntimeError):
    """Bad input to the build (missing clone, path or tool); the message is one line."""


# ---------------------------------------------------------------------------------------------
# Reading pinned files out of a clone (work tree or bare).
# ---------------------------------------------------------------------------------------------


class Repo:
    def __init__(self, path: Path, slug: str, pinned: str):
        self.path, self.slug = Path(path), slug
        if not self.path.exists():
            raise RealSetError(f"no clone of {slug} at {self.path} (pass --clone, or git clone "
                               f"https://github.com/{slug} {self.path})")
        head = self._git("rev-parse", "HEAD").strip()
        has_pin = subprocess.run(["git", f"--git-dir={self.git_dir}", "cat-file", "-e", f"{pinned}^{{commit}}"],
                                 capture_output=True).returncode == 0
        self.commit = pinned if has_pin else head
        if not has_pin:
            print(f"realset.py: warning: {slug}: pinned commit {pinned[:12]} not in the clone; using HEAD {head[:12]}",
                  file=sys.stderr)

    @property
    def git_dir(self) -> Path:
        return self.path / ".git" if (self.path / ".git").exists() else self.path

    def _git(self, *args) -> str:
        out = subprocess.run(["git", f"--git-dir={self.git_dir}", *args], capture_output=True)
        if out.returncode:
            raise RealSetError(f"{self.slug}: git {' '.join(args)}: {out.stderr.decode().strip().splitlines()[-1:]}")
        return out.stdout.decode()

    def read(self, path: str) -> bytes:
        out = subprocess.run(["git", f"--git-dir={self.git_dir}", "show", f"{self.commit}:{path}"], capture_output=True)
        if out.returncode:
            raise RealSetError(f"{self.slug}@{self.commit[:12]}: no file {path}")
        return out.stdout

    def listdir(self, path: str) -> list[str]:
        return sorted(self._git("ls-tree", "--name-only", f"{self.commit}:{path}").split())


SOURCE_REPO = {"7scenes": "tsdf-fusion-python", "middlebury": "DDL_demo", "lattermann": "Stereo-Dataset",
               "eth3d": "ccj5351.github.io"}


def open_repos(sources: Path, clone: bool, needed=tuple(REPOS)) -> dict:
    repos = {}
    for name in needed:
        slug, pinned = REPOS[name]
        path = Path(sources) / name
        if clone and not path.exists():
            subprocess.run(["git", "clone", "--quiet", f"https://github.com/{slug}", str(path)], check=True)
            subprocess.run(["git", "-C", str(path), "checkout", "--quiet", pinned], check=True)
        repos[name] = Repo(path, slug, pinned)
    return repos


def source_folder(path, clone: bool) -> Path:
    """--sources as a folder: it must exist unless --clone may create it."""
    sources = Path(path)
    if not sources.is_dir() and not clone:
        raise RealSetError(f"--sources {sources}: no such folder (pass --clone to create it)")
    sources.mkdir(parents=True, exist_ok=True)
    return sources


def decode_image(raw: bytes) -> np.ndarray:
    """RGB uint8 (H, W, 3) from PNG/JPG bytes."""
    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im.convert("RGB"))


def decode_png16(raw: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im).astype(np.int64)


def read_pfm(raw: bytes) -> np.ndarray:
    """A PFM image (Middlebury's disparity format): 'Pf' (one channel), 'W H', scale (negative: little-endian),
    float32 rows stored bottom to top."""
    header, pos = [], 0
    while len(header) < 3:
        end = raw.index(b"\n", pos)
        header += raw[pos:end].split()
        pos = end + 1
    kind, w, h, scale = header[0], int(header[1]), int(header[2]), float(header[3]) if len(header) > 3 else None
    if scale is None:  # the scale sits on its own line
        end = raw.index(b"\n", pos)
        scale, pos = float(raw[pos:end]), end + 1
    if kind != b"Pf":
        raise RealSetError(f"PFM kind {kind!r}: expected single-channel 'Pf'")
    data = np.frombuffer(raw, dtype="<f4" if scale < 0 else ">f4", count=w * h, offset=pos)
    return data.reshape(h, w)[::-1].astype(np.float32)


def parse_calib(text: str) -> dict:
    """Middlebury calib.txt ('key=value' lines, matrices as '[a b c; d e f; g h i]', spaces anywhere)."""
    calib = {}
    for line in text.splitlines():
        if "=" not in line:
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        if value.startswith("["):
            calib[key] = np.array([[float(x) for x in row.split()] for row in value.strip("[] ").split(";")])
        else:
            calib[key] = float(value)
    return calib


# ---------------------------------------------------------------------------------------------
# Stereo: SGBM both ways, left-right consistency, disparity -> depth.
# ---------------------------------------------------------------------------------------------


def _sgbm(left, right, min_disp, num_disp, block):
    # P1/P2: OpenCV's suggested smoothness penalties for 3-channel input (8 and 32 x channels x block^2)
    matcher = cv2.StereoSGBM_create(minDisparity=min_disp, numDisparities=num_disp, blockSize=block,
                                    P1=8 * 3 * block ** 2, P2=32 * 3 * block ** 2, uniquenessRatio=10,
                                    speckleWindowSize=100, speckleRange=2, disp12MaxDiff=-1,
                                    mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
    return matcher.compute(np.ascontiguousarray(left), np.ascontiguousarray(right)).astype(np.float32) / 16.0


def stereo_disparity(left, right, min_disp=0, num_disp=64, block=5, max_lr_diff=1.0):
    """Left-view disparity (H, W) float32 of a rectified RGB pair (uint8, (H, W, 3)), 0 where not confident.

    The right view's disparity comes from the same matcher on the mirrored pair (mirroring swaps the roles of the
    views and keeps disparities positive). A left pixel x with disparity dL lands on x - dL in the right view;
    it is kept only if dR there is within max_lr_diff of dL (occlusions and mismatches fail this), and if SGBM's
    own uniqueness and speckle filters kept it (they mark the rest below min_disp)."""
    if cv2 is None:
        raise RealSetError("OpenCV is needed for stereo: pip install opencv-python-headless")
    num_disp = int(math.ceil(num_disp / 16) * 16)  # SGBM wants a multiple of 16
    d_left = _sgbm(left, right, min_disp, num_disp, block)
    d_right = _sgbm(right[:, ::-1], left[:, ::-1], min_disp, num_disp, block)[:, ::-1]
    h, w = d_left.shape
    ok = d_left > max(min_disp, 0)  # failed pixels are min_disp - 1; zero disparity has no depth
    cols = np.rint(np.arange(w)[None, :] - d_left).astype(np.int64)
    inside = ok & (cols >= 0) & (cols < w)
    rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
    consistent = np.zeros_like(ok)
    consistent[inside] = np.abs(d_left[inside] - d_right[rows[inside], cols[inside]]) <= max_lr_diff
    return np.where(consistent, d_left, 0.0).astype(np.float32)


def disparity_to_depth(disparity, focal, baseline, doffs=0.0):
    """Depth = focal * baseline / (d + doffs) (units of baseline), 0 where d is 0 (invalid)."""
    d = np.asarray(disparity, np.float64)
    with np.errstate(divide="ignore"):
        depth = np.where(d > 0, focal * baseline / (d + doffs), 0.0)
    return depth.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# 7-Scenes: registering depth to colour by edges.
# ---------------------------------------------------------------------------------------------


def depth_edges(depth, rel_jump=0.1):
    """Boolean map of depth discontinuities: a valid pixel whose right or lower valid neighbour differs by more
    than rel_jump of the nearer depth."""
    d = np.asarray(depth, np.float64)
    edges = np.zeros(d.shape, bool)
    for a, b, sl in ((d[:, :-1], d[:, 1:], (slice(None), slice(0, -1))), (d[:-1], d[1:], (slice(0, -1), slice(None)))):
        both = (a > 0) & (b > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            jump = both & (np.abs(a - b) > rel_jump * np.minimum(a, b))
        edges[sl] |= jump
    return edges


def image_gradient(rgb):
    """Gradient magnitude of the grey image, lightly blurred (sigma 1.5) so a near miss still scores."""
    from scipy import ndimage
    grey = np.asarray(rgb, np.float64).mean(-1)
    grey = ndimage.gaussian_filter(grey, 1.5)
    return np.hypot(ndimage.sobel(grey, 1), ndimage.sobel(grey, 0))


def warp_depth(depth, scale, dx, dy, centre=(320.0, 240.0)):
    """The depth image as the colour camera sees it under the model u_c = cx + scale (u_d - cx) + dx (same for v):
    each colour pixel takes the nearest depth pixel it maps back to, 0 outside."""
    h, w = depth.shape
    cx, cy = centre
    v, u = np.mgrid[0:h, 0:w]
    ud = np.rint(cx + (u - cx - dx) / scale).astype(np.int64)
    vd = np.rint(cy + (v - cy - dy) / scale).astype(np.int64)
    inside = (ud >= 0) & (ud < w) & (vd >= 0) & (vd < h)
    out = np.zeros_like(depth)
    out[inside] = depth[vd[inside], ud[inside]]
    return out


def edge_alignment(frames, scale, max_shift=30, centre=(320.0, 240.0)):
    """For one scale: the mean colour gradient on the warped depth edges for every shift (dx, dy) in
    [-max_shift, max_shift]^2, averaged over frames, computed at once by FFT cross-correlation.
    frames: list of (gradient (H, W), depth edges (H, W)). Returns an array (2 m + 1, 2 m + 1) indexed [dy, dx]."""
    total = 0.0
    for grad, edges in frames:
        h, w = grad.shape
        H, W = h + max_shift, w + max_shift  # zero padded: no wrap-around within +-max_shift
        ev, eu = np.nonzero(edges)
        u = np.rint(centre[0] + scale * (eu - centre[0])).astype(np.int64)
        v = np.rint(centre[1] + scale * (ev - centre[1])).astype(np.int64)
        keep = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        e = np.zeros((h, w))
        np.add.at(e, (v[keep], u[keep]), 1.0)
        # corr[dy, dx] = sum_p e(p) grad(p + (dy, dx)); negative shifts wrap to the end of the padded array
        corr = np.fft.irfft2(np.conj(np.fft.rfft2(e, (H, W))) * _gradient_fft(grad, H, W), (H, W))
        rows = np.r_[np.arange(H - max_shift, H), np.arange(0, max_shift + 1)]
        cols = np.r_[np.arange(W - max_shift, W), np.arange(0, max_shift + 1)]
        total = total + corr[np.ix_(rows, cols)] / max(keep.sum(), 1)
    return total / len(frames)


_FFT_CACHE: dict = {}


def _gradient_fft(grad, H, W):
    key = (id(grad), H, W)
    if key not in _FFT_CACHE:
        _FFT_CACHE.clear() if len(_FFT_CACHE) > 64 else None
        _FFT_CACHE[key] = (grad, np.fft.rfft2(grad, (H, W)))  # keep grad alive so its id stays unique
    return _FFT_CACHE[key][1]


def estimate_registration(frames, coarse=np.arange(0.80, 1.201, 0.01), fine_step=0.0025, max_shift=30):
    """The global (scale, dx, dy) that maximises the mean colour gradient on the depth edges (scales on a 0.01 grid,
    then 0.0025 around the best; shifts in whole pixels), with the score at the identity and at the best."""
    def search(scales):
        best = (-np.inf, 1.0, 0, 0)
        for s in scales:
            table = edge_alignment(frames, s, max_shift)
            iy, ix = np.unravel_index(np.argmax(table), table.shape)
            if table[iy, ix] > best[0]:
                best = (float(table[iy, ix]), float(s), int(ix - max_shift), int(iy - max_shift))
        return best

    best = search(coarse)
    best = max(best, search(best[1] + fine_step * np.arange(-3, 4)))
    identity = float(edge_alignment(frames, 1.0, max_shift)[max_shift, max_shift])
    return {"scale": round(best[1], 4), "dx": best[2], "dy": best[3], "score_best": round(best[0], 3),
            "score_identity": round(identity, 3)}


# ---------------------------------------------------------------------------------------------
# The sources. Each yields frames {"name", "source", "kind", "image", "depth" or "disparity", "paths", ...}.
# ---------------------------------------------------------------------------------------------


def fit_size(h, w):
    s = min(1.0, MAX_SIDE / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s)), s


def shrink(image, target, kind):
    """Image (bilinear, antialiased) and ground truth (nearest: no mixing across edges or holes) to <= 640 px;
    disparity in pixels scales with the image, metric depth does not."""
    h, w = image.shape[:2]
    H, W, s = fit_size(h, w)
    if s == 1.0:
        return image, target
    img = resize(image.astype(np.float32).transpose(2, 0, 1), H, W)
    img = np.clip(np.rint(img.transpose(1, 2, 0)), 0, 255).astype(np.uint8)
    t = resize_nearest(target, H, W)
    return img, (t * s if kind == "disparity_only" else t).astype(np.float32)


def sevenscenes_frames(repo, register=True, frame_ids=SEVENSCENES_FRAMES, calibration_ids=None):
    """The chosen 7-Scenes frames with depth in metres; the registration is estimated on calibration_ids
    (default: every 50th frame, 20 frames) and applied to all (or not, register=False)."""
    def load(i):
        rgb = decode_image(repo.read(f"data/frame-{i:06d}.color.jpg"))
        raw = decode_png16(repo.read(f"data/frame-{i:06d}.depth.png"))
        depth = np.where((raw > 0) & (raw < 65535), raw / 1000.0, 0.0).astype(np.float32)
        return rgb, depth

    calibration_ids = calibration_ids if calibration_ids is not None else list(range(0, 1000, 50))
    cal = [load(i) for i in calibration_ids]
    reg = estimate_registration([(image_gradient(rgb), depth_edges(d)) for rgb, d in cal])
    for i in frame_ids:
        rgb, depth = load(i)
        if register:
            depth = warp_depth(depth, reg["scale"], reg["dx"], reg["dy"])
        yield {"name": f"7scenes_{i:06d}", "source": "7scenes", "kind": "metric", "image": rgb, "depth": depth,
               "repo": repo, "paths": [f"data/frame-{i:06d}.color.jpg", f"data/frame-{i:06d}.depth.png"],
               "ground_truth": "Kinect depth (mm), " + ("registered to colour by the estimated global scale and shift"
                                                         if register else "not registered to colour"),
               "registration": dict(reg, applied=register, calibration_frames=len(calibration_ids))}


def middlebury_frames(repo, scenes=MIDDLEBURY_SCENES):
    for scene in scenes:
        paths = [f"MiddEval3/trainingQ/{scene}/im0.png", f"MiddEval3/trainingQ/{scene}/calib.txt",
                 f"MiddEval3GT/trainingQ/{scene}/disp0GT.pfm"]
        rgb = decode_image(repo.read(paths[0]))
        calib = parse_calib(repo.read(paths[1]).decode())
        disp = read_pfm(repo.read(paths[2]))
        if disp.shape != rgb.shape[:2]:
            raise RealSetError(f"Middlebury {scene}: disparity {disp.shape} != image {rgb.shape[:2]}")
        disp = np.where(np.isfinite(disp) & (disp > 0), disp, 0.0)
        depth = disparity_to_depth(disp, calib["cam0"][0, 0], calib["baseline"] / 1000.0, calib["doffs"])
        yield {"name": f"middlebury_{scene}", "source": "middlebury", "kind": "metric", "image": rgb, "depth": depth,
               "repo": repo, "paths": paths, "ground_truth": "structured-light disparity disp0GT.pfm; depth = f B / (d + doffs)",
               "calibration": {"f": calib["cam0"][0, 0], "doffs": calib["doffs"], "baseline_mm": calib["baseline"]},
               "right": decode_image(repo.read(f"MiddEval3/trainingQ/{scene}/im1.png")), "ndisp": int(calib["ndisp"])}


LATTERMANN_FOCAL, LATTERMANN_BASELINE = 1104.37, 0.16005  # camera_parameters.txt: camera.A fx (1280x960), t (m)


def lattermann_frames(repo, step=5, offset=0):
    params = repo.read("camera_parameters.txt").decode()
    if f"{LATTERMANN_FOCAL:.5f}" not in params or f"t={LATTERMANN_BASELINE}" not in params:
        raise RealSetError("Stereo-Dataset camera_parameters.txt does not hold the expected fx and t")
    names = repo.listdir("dataset")[offset::step]
    for name in names:
        paths = [f"dataset/{name}/{name}_left_img.png", f"dataset/{name}/{name}_right_img.png", "camera_parameters.txt"]
        left, right = decode_image(repo.read(paths[0])), decode_image(repo.read(paths[1]))
        h, w = left.shape[:2]
        H, W, s = fit_size(h, w)  # match at the stored size: SGBM at full size needs 2x the disparity range
        left_s = cv2.resize(left, (W, H), interpolation=cv2.INTER_AREA)
        right_s = cv2.resize(right, (W, H), interpolation=cv2.INTER_AREA)
        disp = stereo_disparity(left_s, right_s, min_disp=0, num_disp=192)
        depth = disparity_to_depth(disp, LATTERMANN_FOCAL * s, LATTERMANN_BASELINE)
        yield {"name": f"lattermann_{name}", "source": "lattermann", "kind": "metric", "image": left_s, "depth": depth,
               "repo": repo, "paths": paths, "ground_truth": "StereoSGBM + left-right check; depth = f B / d",
               "calibration": {"f": LATTERMANN_FOCAL * s, "baseline_m": LATTERMANN_BASELINE}}


ETH3D_DIR = "files/stereo-datasets/ETH3D/two_view_training"


def eth3d_frames(repo, step=2, offset=0):
    names = [n[:-4] for n in repo.listdir(f"{ETH3D_DIR}/image_0") if n.endswith(".png")][offset::step]
    for name in names:
        paths = [f"{ETH3D_DIR}/image_0/{name}.png", f"{ETH3D_DIR}/image_1/{name}.png"]
        left, right = decode_image(repo.read(paths[0])), decode_image(repo.read(paths[1]))
        disp = stereo_disparity(left, right, min_disp=0, num_disp=96)
        img, disp = shrink(left, disp, "disparity_only")
        yield {"name": f"eth3d_{name}", "source": "eth3d", "kind": "disparity_only", "image": img, "disparity": disp,
               "repo": repo, "paths": paths, "ground_truth": "StereoSGBM + left-right check, disparity only (no calibration in the copy)"}


# ---------------------------------------------------------------------------------------------
# Writing DIR and the manifest.
# ---------------------------------------------------------------------------------------------


def valid_stats(frame) -> dict:
    """Valid fraction and the 2nd / 98th percentiles of valid depth (for disparity_only: of 1 / disparity, a depth
    up to scale when the pair has no disparity offset; the ratio is what means something)."""
    if frame["kind"] == "metric":
        d = frame["depth"]
        v = d[d > 0]
    else:
        disp = frame["disparity"]
        v = 1.0 / disp[disp > 0]
    stats = {"valid_fraction": round(float(v.size / frame["image"][..., 0].size), 4)}
    if v.size:
        q2, q98 = np.percentile(v, [2, 98])
        stats.update(q2=round(float(q2), 4), q98=round(float(q98), 4), q98_over_q2=round(float(q98 / q2), 3))
    return stats


def write_frame(out: Path, frame) -> dict:
    folder = out / frame["name"]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame["image"]).save(folder / "image.png", optimize=False)
    key = "depth" if frame["kind"] == "metric" else "disparity"
    np.save(folder / f"{key}.npy", np.asarray(frame[key], np.float32))
    repo = frame["repo"]
    meta = {"name": frame["name"], "source": frame["source"], "kind": frame["kind"], "licence": LICENCES[frame["source"]],
            "repository": f"https://github.com/{repo.slug}", "commit": repo.commit, "paths": frame["paths"],
            "ground_truth": frame["ground_truth"], "size": list(frame["image"].shape[:2]), **valid_stats(frame)}
    for extra in ("calibration", "registration"):
        if extra in frame:
            meta[extra] = json.loads(json.dumps(frame[extra], default=float))
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def stereo_check(frame) -> dict:
    """SGBM pseudo-depth against Middlebury's ground truth: how far the stereo sources' depth can be trusted."""
    disp = stereo_disparity(frame["image"], frame["right"], min_disp=0, num_disp=frame["ndisp"] + 16)
    c = frame["calibration"]
    depth = disparity_to_depth(disp, c["f"], c["baseline_mm"] / 1000.0, c["doffs"])
    both = (depth > 0) & (frame["depth"] > 0)
    rel = np.abs(depth[both] - frame["depth"][both]) / frame["depth"][both]
    return {"name": frame["name"], "sgbm_valid_fraction": round(float((depth > 0).mean()), 4),
            "abs_rel": round(float(rel.mean()), 4), "within_5pct": round(float((rel < 0.05).mean()), 4)}


# ---------------------------------------------------------------------------------------------
# Photo textures for the synthetic world: `python realset.py textures --out DIR --sources CLONES [--clone]`.
# ---------------------------------------------------------------------------------------------

TEXTURE_REPO = "denoising_datasets"
TEXTURE_MAX_SIDE = 256  # the world's mips start at 128 x 128 (scenes._TEX_SIZE); one level more is kept
# The repository's colour photograph sets (its README: "the color versions are preceded by C"), and why the rest of
# it is left out.
TEXTURE_SETS = ("CBSD68", "CSet5", "CSet14", "CSun_Hays80", "CUrban100")
TEXTURE_SKIPPED_SETS = {
    "BSD68": "grey copies of CBSD68's photographs", "Set5": "grey copies of CSet5's photographs",
    "Set14": "grey copies of CSet14's photographs", "Sun_Hays80": "grey copies of CSun_Hays80's photographs",
    "Urban100": "grey copies of CUrban100's photographs", "CManga109": "drawn manga covers, not photographs",
    "Manga109": "grey copies of CManga109's drawn manga covers, not photographs",
}
TEXTURE_SKIPPED_FILES = {
    "CSet14/comic.png": "a painting, not a photograph",
    "CSet14/ppt3.png": "a book cover of type and clip art, not a photograph",
    "CSet14/lenna.png": "the 'Lena' picture: its model asked in 2019 that it be retired, and IEEE journals stopped "
                        "accepting papers that use it in 2024",
}
TEXTURE_LICENCE = ("no licence stated: the repository has no LICENSE file and its README says the datasets 'are just "
                   "collected here for convenience, no ownership claimed and no guarantees provided'. The photographs "
                   "belong to benchmark sets published with papers (BSD68 from the Berkeley Segmentation Dataset, "
                   "Martin et al. 2001; Set5, Bevilacqua et al. 2012; Set14, Zeyde et al. 2010; Sun-Hays80, Sun and "
                   "Hays 2012; Urban100, Huang et al. 2015). This repository commits the script and this manifest, "
                   "never the photographs")
SAME_PHOTO = 0.8  # fingerprint similarity above which two pictures are one photograph (see fingerprints)
ORDINAL_PAIRS = Path(__file__).resolve().parent / "docs" / "ordinal_pairs.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def photo_square(rgb, max_side=TEXTURE_MAX_SIDE) -> np.ndarray:
    """uint8 (S, S, 3): the centred largest power-of-two square of an RGB picture (as scenes.texture_mips crops),
    box-filtered down by halving to at most max_side."""
    h, w = rgb.shape[:2]
    s = 1 << int(math.log2(min(h, w)))
    y0, x0 = (h - s) // 2, (w - s) // 2
    square = np.asarray(rgb[y0:y0 + s, x0:x0 + s], np.float64)
    while s > max_side:
        s //= 2
        square = square.reshape(s, 2, s, 2, 3).mean(axis=(1, 3))
    return np.clip(np.rint(square), 0, 255).astype(np.uint8)


def _detail(rgb, n=32) -> np.ndarray:
    grey = resize(np.asarray(rgb, np.float32).mean(-1), n, n).astype(np.float64)
    from scipy import ndimage
    v = (grey - ndimage.gaussian_filter(grey, 2.0, mode="reflect")).ravel()
    v -= v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-9)


def fingerprints(rgb) -> np.ndarray:
    """(2, 1024): unit vectors of the fine detail (a 32 x 32 grey thumbnail minus its Gaussian blur, sigma 2) of the
    whole picture squashed to a square and of its photo_square crop. The similarity of two pictures is the larger of
    the two dot products: one photograph resized, re-encoded as JPEG or cropped by a few pixels scores above 0.94
    (the ten ordinal photographs, tried), while the repository's distinct photographs score at most 0.42 against each
    other and 0.37 against the ordinal ones; the low frequencies are left out because a bright sky over dark ground
    alone makes two photographs look alike."""
    return np.stack([_detail(rgb), _detail(photo_square(rgb))])


def similarity(a, b) -> float:
    return float(max(a[0] @ b[0], a[1] @ b[1]))


def reserved_photographs(pairs_path=ORDINAL_PAIRS) -> list:
    """The ordinal check's photographs (docs/ordinal_pairs.json), which must never be a texture:
    [{"photo": "package/file", "stem", "fingerprints" (None where the package is not installed)}]."""
    out = []
    for im in json.loads(Path(pairs_path).read_text())["images"]:
        try:
            rgb = np.rint(read_image(package_file(im["package"], im["file"])) * 255).astype(np.uint8)
            fp = fingerprints(rgb)
        except FileNotFoundError:
            fp = None
        out.append({"photo": f"{im['package']}/{im['file']}", "stem": Path(im["file"]).stem.lower(), "fingerprints": fp})
    return out


def texture_candidates(repo) -> tuple[list, dict]:
    """The repository's pictures in TEXTURE_SETS (paths in ls-tree order) and {top-level folder: why it is left out}."""
    tops = repo.listdir("")
    missing = [t for t in TEXTURE_SETS if t not in tops]
    if missing:
        raise RealSetError(f"{repo.slug}@{repo.commit[:12]} has no folder {', '.join(missing)}")
    skipped = {t: TEXTURE_SKIPPED_SETS.get(t, "not one of the photograph sets") for t in tops
               if t not in TEXTURE_SETS and "." not in t}
    paths = [f"{t}/{name}" for t in TEXTURE_SETS for name in repo.listdir(t) if name.lower().endswith(IMAGE_SUFFIXES)]
    return paths, skipped


def build_textures(out: Path, repo, max_side=TEXTURE_MAX_SIDE, pairs_path=ORDINAL_PAIRS) -> dict:
    """Write every kept photograph as OUT/SET_NAME.png (photo_square) and OUT/manifest.json; returns the manifest.

    Left out, each with its reason in the manifest: sets that are not colour photographs, TEXTURE_SKIPPED_FILES,
    any picture that is one of the ordinal check's photographs (by file name, or fingerprint similarity
    >= SAME_PHOTO), and any picture that repeats one already kept (the same pixels after photo_square, or
    similarity >= SAME_PHOTO: Set5's head is Set14's face)."""
    out = Path(out)
    paths, skipped_sets = texture_candidates(repo)
    names = {p: p.split("/")[0] + "_" + Path(p).stem + ".png" for p in paths}
    if out.is_dir():
        strangers = sorted(f.name for f in out.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
                           and f.name not in names.values())
        if strangers:
            raise RealSetError(f"--out {out} holds {len(strangers)} other pictures ({strangers[0]}, ...): the world "
                               "would take them for textures; use an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    reserved = reserved_photographs(pairs_path)
    closest = {r["photo"]: (-1.0, None) for r in reserved}
    kept, excluded, seen_pixels, kept_fp = [], [], {}, []
    for path in paths:
        if path in TEXTURE_SKIPPED_FILES:
            excluded.append({"path": path, "why": TEXTURE_SKIPPED_FILES[path]})
            continue
        rgb = decode_image(repo.read(path))
        square = photo_square(rgb, max_side)
        fp = fingerprints(rgb)
        why = None
        for r in reserved:
            if r["fingerprints"] is not None:
                sim = similarity(fp, r["fingerprints"])
                closest[r["photo"]] = max(closest[r["photo"]], (round(sim, 3), path), key=lambda c: c[0])
            if Path(path).stem.lower() == r["stem"] or (r["fingerprints"] is not None and sim >= SAME_PHOTO):
                why = f"is the ordinal check's photograph {r['photo']} (docs/ordinal_pairs.json)"
                break
        pixels = hashlib.sha256(square.tobytes()).hexdigest()
        if why is None and pixels in seen_pixels:
            why = f"the same pixels as {seen_pixels[pixels]}"
        if why is None:
            twin = next((k["path"] for k, f in zip(kept, kept_fp) if similarity(fp, f) >= SAME_PHOTO), None)
            why = f"the same photograph as {twin}" if twin else None
        if why:
            excluded.append({"path": path, "why": why})
            continue
        seen_pixels[pixels] = path
        file = out / names[path]
        Image.fromarray(square).save(file, optimize=False)
        kept.append({"name": file.name, "path": path, "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                     "source_size": list(rgb.shape[:2]), "size": square.shape[0]})
        kept_fp.append(fp)
        print(f"{file.name}: {square.shape[0]} px", file=sys.stderr)
    unchecked = [r["photo"] for r in reserved if r["fingerprints"] is None]
    manifest = {
        "description": "photographs the synthetic world can take as textures (scenes.PhotoTextures, train.py "
                       "--textures DIR), built by realset.py; the photographs are not redistributed",
        "rebuild": "python realset.py textures --out DIR --sources CLONES --clone",
        "repository": f"https://github.com/{repo.slug}", "commit": repo.commit, "licence": TEXTURE_LICENCE,
        "processing": f"RGB; centred crop to the largest power-of-two square; box-filtered by halving to at most "
                      f"{max_side} x {max_side}; 8-bit PNG named SET_NAME.png",
        "sets": list(TEXTURE_SETS), "excluded_sets": skipped_sets,
        "same_photograph": f"fingerprint similarity >= {SAME_PHOTO} (realset.fingerprints), or the same pixels",
        "reserved": {"why": "the ordinal check's photographs (docs/ordinal_pairs.json) score the model on real "
                            "photographs; none may be a texture (checked by file name and by fingerprint)",
                     "closest": [{"photo": k, "similarity": v[0], "path": v[1]} for k, v in closest.items()
                                 if v[1] is not None],
                     "checked_by_name_only": unchecked},
        "photographs": len(kept), "excluded": excluded, "files": kept}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def run_build(prog: str, args, repo_names: list, make) -> dict:
    """The two command lines' shared ending: open (or --clone) the clones under --sources, make(repos) -> the
    manifest, one line and exit 2 for what goes wrong, and a copy of manifest.json at --manifest if asked."""
    try:
        manifest = make(open_repos(source_folder(args.sources, args.clone), args.clone, repo_names))
    except (RealSetError, OSError, subprocess.CalledProcessError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.manifest:
        Path(args.manifest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(args.out) / "manifest.json", args.manifest)
    return manifest


def textures_main(argv=None):
    parser = argparse.ArgumentParser(prog="realset.py textures", description=(
        "Build a folder of photo textures for the synthetic world (train.py --data world --textures DIR) from a clone "
        f"of github.com/{REPOS[TEXTURE_REPO][0]}: each colour photograph centre-cropped to a power-of-two square, at "
        f"most {TEXTURE_MAX_SIDE} px, as PNG, with manifest.json."))
    parser.add_argument("--out", required=True, help="the folder to write (train.py --textures)")
    parser.add_argument("--sources", required=True, help=f"folder holding the clone {TEXTURE_REPO}/ (or a bare one)")
    parser.add_argument("--clone", action="store_true", help="git clone the repository if it is missing")
    parser.add_argument("--manifest", default=None, help="also copy manifest.json here (docs/textures/manifest.json)")
    args = parser.parse_args(argv)
    manifest = run_build("realset.py textures", args, [TEXTURE_REPO],
                         lambda repos: build_textures(Path(args.out), repos[TEXTURE_REPO]))
    print(f"wrote {manifest['photographs']} photographs to {args.out} ({len(manifest['excluded'])} pictures left out, "
          f"and the sets {', '.join(manifest['excluded_sets'])})")


DEFAULT_SOURCES = ("7scenes", "middlebury", "eth3d")  # lattermann is opt-in: see the module docstring


def build(out: Path, repos: dict, register=True, sources=DEFAULT_SOURCES) -> dict:
    makers = {"7scenes": lambda repo: sevenscenes_frames(repo, register), "middlebury": middlebury_frames,
              "lattermann": lattermann_frames, "eth3d": eth3d_frames}
    out.mkdir(parents=True, exist_ok=True)
    frames, checks = [], []
    for source in sources:
        for frame in makers[source](repos[SOURCE_REPO[source]]):
            if source == "middlebury":
                checks.append(stereo_check(frame))
                frame["image"], frame["depth"] = shrink(frame["image"], frame["depth"], "metric")
            frames.append(write_frame(out, frame))
            print(f"{frame['name']}: {frames[-1]['valid_fraction']:.3f} valid", file=sys.stderr)
    manifest = {"description": "depthart's real validation set, built by realset.py; frames are not redistributed",
                "layout": "FRAME/image.png, FRAME/depth.npy (metres, 0 invalid) or FRAME/disparity.npy, FRAME/meta.json",
                "registered_7scenes": register, "frames": frames, "sgbm_vs_middlebury_ground_truth": checks}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["textures"]:
        return textures_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the folder to write (evaluate.py --data-root)")
    parser.add_argument("--sources", required=True, help="folder with one clone per repository, named after it")
    parser.add_argument("--clone", action="store_true", help="git clone missing repositories from GitHub")
    parser.add_argument("--no-register", action="store_true", help="7-Scenes depth as recorded, not registered")
    parser.add_argument("--only", nargs="+", choices=["7scenes", "middlebury", "lattermann", "eth3d"],
                        default=list(DEFAULT_SOURCES),
                        help="sources to build (default: %(default)s; lattermann's stereo depth is noise, see above)")
    parser.add_argument("--manifest", default=None, help="also copy manifest.json here (docs/real/manifest.json)")
    args = parser.parse_args(argv)
    manifest = run_build("realset.py", args, [SOURCE_REPO[s] for s in args.only],
                         lambda repos: build(Path(args.out), repos, register=not args.no_register, sources=args.only))
    print(f"wrote {len(manifest['frames'])} frames to {args.out}")


if __name__ == "__main__":
    main()
