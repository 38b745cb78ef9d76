"""Data for depthart: image files, the synthetic world as a dataset, and HyperSim.

Every dataset here yields dicts with the same three tensors, which train.py, evaluate.py and
infer_trt.py rely on:

    "image": float32 (3, H, W) in [0, 1]
    "depth": float32 (1, H, W) planar depth in metres (distance along the optical axis),
             finite everywhere: pixels without ground truth are filled, see "valid"
    "valid": bool    (1, H, W), False where the ground truth had no depth
    "name":  str     (optional)
    "normals": float32 (3, H, W), where the dataset has them (the world scenes; HyperSim with normals=True):
             unit camera-frame surface normals, x right, y down, z forward (the OpenCV camera), facing
             the camera (z <= 0), 0 where invalid; "valid" then also marks where the normals are known

Depth is returned in metres; mapping it to [-1, 1] is the model's job (depthart.py).

Sections:
  1. Reading user images robustly (read_image, exif_focal_px) and the one resize (resize, resize_image,
     resize_nearest); fit_square / unfit_square for images of any aspect ratio.
  2. SyntheticScenes: the procedural world of scenes.py as a dataset, split by seed ranges.
  3. HyperSim in its official layout (planar depth from the camera metadata, tone mapping).
  4. make_dataset, the one entry point the scripts use.
"""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import logging
import math
import multiprocessing as mp
import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps
from scipy import ndimage  # the exact nearest-pixel transform, in C, for filling holes
from tqdm import tqdm

from scenes import FAMILIES, family_weights, photo_textures, render_scene, render_world

log = logging.getLogger(__name__)

# =============================================================================================
# 1. Reading images
# =============================================================================================

# Images larger than this are refused: a few hundred bytes of PNG header can claim a
# 100k x 100k image whose decoding would exhaust memory (a "decompression bomb").
MAX_IMAGE_PIXELS = 10_000 * 10_000


class ImageReadError(OSError):
    """An image file could not be turned into an RGB array; the message names the path and why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path!r}: {reason}")


class ImageNotFound(ImageReadError, FileNotFoundError):
    """The path does not exist (callers that count missing files apart from broken ones catch this)."""


@contextlib.contextmanager
def _strict_pil(max_pixels: int):
    """PIL settings for one read: our pixel limit, bomb warnings as errors, no silent truncation.

    PIL keeps these as module globals; they are restored afterwards. (DataLoader workers are
    separate processes, so this does not race across workers.)
    """
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we turn the warning into an error.
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # another library may have switched it on
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 (H, W, 3) in [0, 1]. Transparent pixels are composited onto white."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale PNGs open as "I;16" (or "I"): full scale is 65535, not 255.
        gray_HW = np.asarray(img).astype(np.float32) / 65535.0
        return np.repeat(np.clip(gray_HW, 0, 1)[..., None], 3, axis=2)
    if mode == "F":
        # Float TIFFs carry no agreed white point; we take them as already in [0, 1].
        gray_HW = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.repeat(np.clip(gray_HW, 0, 1)[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba_HW4 = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha_HW1 = rgba_HW4[..., 3:]
        # Composite onto white: a transparent logo or cut-out reads as a white background
        # (what a viewer shows) rather than as whatever colour the hidden pixels happen to hold.
        return rgba_HW4[..., :3] * alpha_HW1 + (1.0 - alpha_HW1)
    # L, 1, P, CMYK, YCbCr, LAB, HSV, RGB: PIL knows how to get to RGB.
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def read_image(path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as float32 (H, W, 3) RGB in [0, 1], upright as a viewer shows it.

    - EXIF orientation is applied (phone photos are stored sideways with a rotation tag).
    - Greyscale (L, 16-bit I;16/I scaled by 65535, float F) is repeated to three channels.
    - Palette images are expanded; RGBA, LA and palette transparency are composited onto white.
    - CMYK and other colour spaces are converted to RGB by PIL.
    Raises ImageReadError (with the path and the reason) for a missing path, a directory, an
    empty, truncated or non-image file, or an image above max_pixels (decompression bombs).
    """
    p = Path(path)
    if not p.exists():
        raise ImageNotFound(p, "no such file")
    if p.is_dir():
        raise ImageReadError(p, "is a directory, not an image file")
    if p.stat().st_size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    try:
        with _strict_pil(max_pixels), Image.open(p) as img:
            w, h = img.size
            if w * h > max_pixels:  # PIL only checks some formats; make sure for all of them
                raise ImageReadError(p, f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
                                        "(decompression bomb guard)")
            img.load()  # decode now, inside the try, so truncated data raises here
            img = ImageOps.exif_transpose(img)
            return pil_to_rgb(img)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(p, f"too many pixels (decompression bomb guard, limit {max_pixels}): {e}") from e
    except Image.UnidentifiedImageError as e:
        raise ImageReadError(p, "not an image format PIL can identify") from e
    except Exception as e:  # truncated or corrupt data surfaces as OSError, SyntaxError, ValueError...
        raise ImageReadError(p, f"corrupt or truncated image data ({type(e).__name__}: {e})") from e


def writable_dir(path) -> Path:
    """Create the folder if needed and prove a file can be written in it, before any work: else ValueError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / f".write-test{os.getpid()}").touch()
        (path / f".write-test{os.getpid()}").unlink()
    except OSError as e:
        raise ValueError(f"cannot create or write in {path} ({e.strerror or e})") from None
    return path


def atomic_write(path, write):
    """write(tmp) beside path, fsync, then rename over path: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def package_file(package: str, path: str) -> Path:
    """A data file that an installed package ships (e.g. scikit-image's photographs), found without
    importing the package; FileNotFoundError names what is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (pip install -r requirements.txt)")
    file = Path(spec.submodule_search_locations[0]) / path
    if not file.is_file():
        raise FileNotFoundError(f"{package} does not ship {path} ({file})")
    return file


def exif_focal_px(path) -> float | None:
    """The focal length in pixels from a photo's EXIF FocalLengthIn35mmFilm tag, or None without one.

    A 35 mm equivalent focal length f35 maps the 36 x 24 mm frame's diagonal onto the image's diagonal
    (the convention Depth Pro uses): f_px = f35 * hypot(W, H) / hypot(36, 24). Only the header is read."""
    try:
        with _strict_pil(MAX_IMAGE_PIXELS), Image.open(path) as img:
            f35 = img.getexif().get_ifd(0x8769).get(0xA405)  # Exif IFD, FocalLengthIn35mmFilm
            w, h = img.size
    except Exception:  # noqa: BLE001 (no EXIF, or not an image: read_image reports the latter)
        return None
    try:
        f35 = float(f35)
    except (TypeError, ValueError):
        return None
    return f35 * math.hypot(w, h) / math.hypot(36.0, 24.0) if f35 > 0 else None


def resize(x, H: int, W: int, mode: str = "bilinear", align_corners: bool = False):
    """The one resize of images and depth maps: (..., h, w) array or tensor -> (..., H, W), same kind.

    Bilinear (or bicubic) interpolation, antialiased when shrinking (plain interpolation would alias
    fine textures). Only for dense data: ground truth with holes goes through resize_nearest, where an
    invalid pixel cannot bleed into its neighbours.
    """
    is_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if is_numpy else x.float()
    h, w = t.shape[-2:]
    if (h, w) != (H, W):
        lead = t.shape[:-2]
        shrink = H < h or W < w
        t = F.interpolate(t.reshape(-1, 1, h, w), size=(H, W), mode=mode, align_corners=align_corners,
                          antialias=shrink).reshape(*lead, H, W)
    return t.numpy() if is_numpy else t


def resize_image(img_HW3, size) -> torch.Tensor:
    """(H, W, 3) array or tensor in [0, 1] -> float32 tensor (3, S, S) (or (3, h, w) for size=(h, w)).

    The aspect ratio is not kept: the model sees a square, as in the paper (256 x 256).
    """
    h, w = (size, size) if np.isscalar(size) else size
    x_3HW = torch.as_tensor(np.asarray(img_HW3, dtype=np.float32)).permute(2, 0, 1)
    return resize(x_3HW, int(h), int(w)).clamp(0, 1).contiguous()


FITS = ("pad", "squash")  # how an image of any aspect ratio becomes the model's square input


def fit_square(x_CHW: np.ndarray, S: int, fit: str = "pad", mode: str = "bilinear"):
    """(C, h, w) array -> ((C, S, S) model input, box) where box = (top, left, height, width) is the part
    of the square the image fills (unfit_square crops the prediction back to it).

    pad (the default): resize so the long side is S, keeping the aspect ratio, centre it, and fill the
    rest by repeating the border pixels (edge padding; on held-out non-square scenes it scored better
    than squashing, see README). squash: resize to S x S, distorting a non-square image."""
    x_CHW = np.asarray(x_CHW, dtype=np.float32)
    h, w = x_CHW.shape[-2:]
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; choose one of {', '.join(FITS)}")
    if fit == "squash" or h == w:
        return resize(x_CHW, S, S, mode), (0, 0, S, S)
    scale = S / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (S - nh) // 2, (S - nw) // 2
    padded = np.pad(resize(x_CHW, nh, nw, mode), ((0, 0), (top, S - nh - top), (left, S - nw - left)), mode="edge")
    return padded, (top, left, nh, nw)


def unfit_square(y_SS: np.ndarray, box, H: int, W: int, mode: str = "bilinear", align_corners: bool = False):
    """A prediction (..., S, S) on fit_square's input -> (..., H, W) at the image's own size (box None: all of it)."""
    y_SS = np.asarray(y_SS, np.float32)
    top, left, nh, nw = box or (0, 0, *y_SS.shape[-2:])
    return resize(y_SS[..., top:top + nh, left:left + nw], H, W, mode, align_corners)


def resize_nearest(x_HW: np.ndarray, H: int, W: int) -> np.ndarray:
    """Nearest-neighbour resize that samples each output pixel's centre (no values are mixed).

    Used for ground-truth depth and masks, where averaging would invent depths between a
    foreground edge and the wall behind it. ("nearest-exact"; torch's plain "nearest" samples
    the top-left of each block instead of its centre.)
    """
    h, w = x_HW.shape[:2]  # (h, w) or (h, w, C): channels last ride along
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return x_HW[rows[:, None], cols[None, :]]


# =============================================================================================
# 2. The synthetic world as a dataset (the renderer itself lives in scenes.py)
# =============================================================================================

# The seed ranges of the splits never overlap, so held-out scenes are never trained on.
# train items use seeds [0, VAL_SEED_START).
VAL_SEED_START = 10_000_000    # val items use seeds [10_000_000, 20_000_000)
TEST_SEED_START = 20_000_000   # test items (evaluate.py's default split) use seeds from 20_000_000
SPLIT_SEED_START = {"train": 0, "val": VAL_SEED_START, "test": TEST_SEED_START}
_SEED_STOP = {"train": VAL_SEED_START, "val": TEST_SEED_START, "test": 2 ** 63}
DEFAULT_SYNTHETIC_LENGTH = {"train": 100_000, "val": 1_000, "test": 1_000}


class SyntheticScenes(torch.utils.data.Dataset):
    """Procedural scenes rendered on the fly: item i of a split is the scene of one fixed seed.

    world=False: scenes.render_scene, the flat-coloured box rooms the tiny model was trained
    on ("synthetic"). world=True: scenes.render_world, textured rooms, corridors, tabletops and
    streets with photometric augmentation on the train split, and "normals" in the items ("world");
    subjects=S makes a share S of them subject scenes (a person or an object near the camera, framed as a
    photographer frames it: scenes.subject_family); families="room=0.4,tabletop=0.3,..." (scenes.family_weights)
    draws the other scenes' families with those weights instead of the world's own; photos=FOLDER (a folder of
    photographs, scenes.photo_textures; realset.py textures builds one) puts them on a share of the world's surfaces.
    train: seed = seed_offset + i; val: VAL_SEED_START + seed_offset + i; test likewise from
    TEST_SEED_START. Rendering is deterministic, so nothing needs storing; cache=True keeps
    rendered items in memory (worth it for a small validation set looked at every epoch), and
    disk_cache=FOLDER renders the split once, on every core, into memory-mapped .npy files there
    (uint8 image, float16 depth, int8 normals: 147 kB a scene at 128 x 128), so that training reads
    scenes instead of rendering them (render_world makes ~37 scenes/s on one core at 128 x 128, fewer
    than two cores train on). An interrupted cache fills in the rest next time.
    """

    def __init__(self, split: str = "train", size: int = 64, length: int | None = None,
                 seed_offset: int = 0, cache: bool = False, antialias: bool = True, world: bool = False,
                 disk_cache=None, subjects: float = 0.0, families: str | None = None, photos=None):
        if split not in SPLIT_SEED_START:
            raise ValueError(f"SyntheticScenes: unknown split {split!r}; expected one of {sorted(SPLIT_SEED_START)}")
        self.split, self.size, self.antialias, self.world = split, int(size), antialias, world
        if not 0.0 <= subjects <= 1.0 or (subjects and not world):
            raise ValueError(f"SyntheticScenes: subjects={subjects} must be a share in [0, 1] of world scenes")
        self.subjects = float(subjects)
        if families and not world:
            raise ValueError(f"SyntheticScenes: families={families!r} is a mix of world scenes (world=True)")
        self.mix = family_weights(families)  # None: the world's own mix
        if photos is not None and not world:
            raise ValueError(f"SyntheticScenes: photos={photos} are textures of world scenes (world=True)")
        self.photos = None if photos is None else photo_textures(photos)  # ValueError in one line for a bad folder
        self.length = DEFAULT_SYNTHETIC_LENGTH[split] if length is None else int(length)
        self.first_seed = SPLIT_SEED_START[split] + int(seed_offset)
        if self.length < 0 or seed_offset < 0 or self.first_seed + self.length > _SEED_STOP[split]:
            raise ValueError(f"SyntheticScenes {split}: seeds {self.first_seed}..{self.first_seed + self.length - 1} "
                             f"leave the split's range [{SPLIT_SEED_START[split]}, {_SEED_STOP[split]})")
        self._cache = {} if cache else None
        self.disk = None if disk_cache is None else self._fill_disk_cache(Path(disk_cache))

    def __len__(self) -> int:
        return self.length

    def seed(self, i: int) -> int:
        return self.first_seed + i

    @property
    def kind(self) -> str:
        return "world" if self.world else "synthetic"

    def render(self, i: int) -> dict:
        """Scene i as numpy arrays: image (H, W, 3) float32, depth (H, W), valid (H, W)[, normals (H, W, 3)]."""
        if not self.world:
            image, depth = render_scene(self.seed(i), self.size, self.antialias)
            return {"image": image, "depth": depth, "valid": np.ones(depth.shape, bool)}  # no holes in a room
        # A share of subject scenes (scenes.subject_family), chosen by a stream of its own so the other scenes
        # stay the world's own.
        subject = self.subjects and np.random.default_rng([self.seed(i), 2]).random() < self.subjects
        r = render_world(self.seed(i), self.size, family="subject" if subject else None, augment=self.split == "train",
                         mix=self.mix, photos=self.photos)
        valid = r["valid"]
        # Sky has no depth; it is filled with the farthest depth of the scene, so that what the VQ-VAE
        # and the model learn there is "far" (the metrics ignore it: valid is False).
        depth = np.where(valid, r["depth"], r["depth"][valid].max() if valid.any() else 1.0).astype(np.float32)
        return {"image": r["image"], "depth": depth, "valid": valid, "normals": r["normals"]}

    def _fill_disk_cache(self, folder: Path) -> dict:
        mix = (f"_subjects{self.subjects:g}" if self.subjects else "") + (
            "_" + "-".join(f"{f[:4]}{w:.2f}" for f, w in zip(FAMILIES, self.mix)) if self.mix else "") + (
            f"_photos{self.photos.sha256[:16]}" if self.photos else "")  # another texture set: another cache
        folder = folder / f"{self.kind}{mix}_{self.split}_{self.size}px_seeds{self.first_seed}-{self.first_seed + self.length}"
        folder.mkdir(parents=True, exist_ok=True)
        N, S = self.length, self.size
        layout = {"image": ((N, S, S, 3), np.uint8), "depth": ((N, S, S), np.float16),
                  "valid": ((N, S, S), np.bool_), "done": ((N,), np.bool_)}
        if self.world:
            layout["normals"] = ((N, S, S, 3), np.int8)
        arrays = {}
        for name, (shape, dtype) in layout.items():
            path = folder / f"{name}.npy"
            fresh = not path.exists()
            arrays[name] = np.lib.format.open_memmap(path, mode="w+" if fresh else "r+", dtype=dtype, shape=shape)
        todo = np.nonzero(~arrays["done"])[0].tolist()
        if todo:
            with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool, \
                    tqdm(total=N, initial=N - len(todo), desc=f"rendering {folder.name} (once)", unit="scene") as bar:
                for i, r in pool.imap_unordered(self._render_for_cache, todo, chunksize=8):
                    arrays["image"][i] = np.round(r["image"] * 255)
                    arrays["depth"][i], arrays["valid"][i] = r["depth"], r["valid"]
                    if self.world:
                        arrays["normals"][i] = np.round(r["normals"] * 127)
                    arrays["done"][i] = True
                    bar.update(1)
            for a in arrays.values():
                a.flush()
        return {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in layout if k != "done"}

    def _render_for_cache(self, i: int):
        return i, self.render(i)

    def __getitem__(self, i: int) -> dict:
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} scenes")
        i %= self.length
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        if self.disk is not None:
            d = self.disk
            r = {"image": d["image"][i].astype(np.float32) / 255, "depth": d["depth"][i].astype(np.float32),
                 "valid": np.array(d["valid"][i])}
            if self.world:
                r["normals"] = d["normals"][i].astype(np.float32) / 127
        else:
            r = self.render(i)
        item = {"image": torch.from_numpy(r["image"]).permute(2, 0, 1).contiguous(),
                "depth": torch.from_numpy(r["depth"])[None], "valid": torch.from_numpy(r["valid"])[None],
                "name": f"{self.kind}_{self.split}_{self.seed(i)}"}
        if "normals" in r:
            item["normals"] = torch.from_numpy(r["normals"]).permute(2, 0, 1).contiguous()
        if self._cache is not None:
            self._cache[i] = item
        return item


# =============================================================================================
# 3. HyperSim (Roberts et al. 2021), in the layout of Apple's downloads
# =============================================================================================
#
#   ROOT/metadata_images_split_scene_v1.csv     which frames are public and in which split
#   ROOT/metadata_camera_parameters.csv         per-scene camera (fov, M_cam_from_uv, ...)
#   ROOT/SCENE/images/scene_cam_XX_geometry_hdf5/frame.IIII.depth_meters.hdf5   float16 (768, 1024)
#   ROOT/SCENE/images/scene_cam_XX_final_preview/frame.IIII.tonemap.jpg         8-bit colour
#   ROOT/SCENE/images/scene_cam_XX_final_hdf5/frame.IIII.color.hdf5             float16 linear HDR
#   ROOT/SCENE/images/scene_cam_XX_geometry_hdf5/frame.IIII.render_entity_id.hdf5  (optional) -1 = no geometry
#   ROOT/SCENE/images/scene_cam_XX_geometry_hdf5/frame.IIII.normal_cam.hdf5  (normals=True) float16 (768, 1024, 3)
#
# depth_meters is the Euclidean distance from the camera centre to the surface, not planar
# depth; it is NaN where a ray hit nothing (windows, openings).

HYPERSIM_SPLIT_CSV = "metadata_images_split_scene_v1.csv"
HYPERSIM_CAMERA_CSV = "metadata_camera_parameters.csv"
HYPERSIM_SPLITS = ("train", "val", "test")

# Known-bad data, left out of every split. (scene, camera); camera None = the whole scene.
HYPERSIM_EXCLUDED = {
    ("ai_004_009", "cam_01"): "camera reported broken",
    ("ai_038_006", None): "depth anomalies",
    ("ai_026_013", None): "depth anomalies",
}


def hypersim_excluded(scene: str, camera: str) -> bool:
    return (scene, camera) in HYPERSIM_EXCLUDED or (scene, None) in HYPERSIM_EXCLUDED


def hypersim_frames(split_csv, split: str):
    """The public frames of a split: ([(scene, camera, frame_id), ...], number excluded as known-bad).

    Frames not in the public release (flagged content, cameras outside the viewing area) are
    dropped silently: they were never downloadable. Known-bad ones (HYPERSIM_EXCLUDED) are
    dropped and counted.
    """
    if split not in HYPERSIM_SPLITS:
        raise ValueError(f"HyperSim: unknown split {split!r}; expected one of {HYPERSIM_SPLITS}")
    frames, n_excluded = [], 0
    with open(split_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["split_partition_name"] != split or row["included_in_public_release"].strip() != "True":
                continue
            if hypersim_excluded(row["scene_name"], row["camera_name"]):
                n_excluded += 1
                continue
            frames.append((row["scene_name"], row["camera_name"], int(row["frame_id"])))
    return frames, n_excluded


def read_hypersim_cameras(camera_csv) -> dict:
    """metadata_camera_parameters.csv -> {scene_name: {column: value string}}.

    The csv module, not a naive split: some columns hold quoted values with commas in them.
    """
    with open(camera_csv, newline="") as f:
        return {row["scene_name"]: row for row in csv.DictReader(f)}


def hypersim_m_cam_from_uv(camera) -> np.ndarray:
    """The (3, 3) float64 matrix taking [u, v, 1] (NDC, see hypersim_rays) to a camera-space ray."""
    if isinstance(camera, np.ndarray):
        return camera.astype(np.float64).reshape(3, 3)
    return np.array([[float(camera[f"M_cam_from_uv_{i}{j}"]) for j in range(3)] for i in range(3)])


def hypersim_rays(camera, H: int, W: int) -> np.ndarray:
    """Camera-space rays (H, W, 3) float64 through the pixel centres, exactly as HyperSim cast them.

    HyperSim's convention (apple/ml-hypersim contrib/mikeroberts3000, notebook 01): u runs from
    -1 to 1 left to right and v from -1 to 1 bottom to top, both sampled at pixel centres, and
    ray = M_cam_from_uv @ [u, v, 1] in an OpenGL-style camera that looks down -z. For a standard
    camera M is diag(tan(fov/2), tan(fov/2) * H / W, -1); tilt-shift scenes have off-diagonal terms.
    """
    M = hypersim_m_cam_from_uv(camera)
    u_W = (np.arange(W, dtype=np.float64) + 0.5) / W * 2.0 - 1.0
    v_H = 1.0 - (np.arange(H, dtype=np.float64) + 0.5) / H * 2.0  # row 0 is the top: v = 1 - 1/H
    # M @ [u, v, 1] is affine in u and v: build each component from a row and a column.
    return np.stack([M[i, 0] * u_W[None, :] + (M[i, 1] * v_H + M[i, 2])[:, None] for i in range(3)], axis=-1)


def hypersim_planar_depth(dist_HW: np.ndarray, camera) -> np.ndarray:
    """Euclidean distance (H, W) -> planar depth (H, W) float64, exact for any HyperSim camera.

    The surface point is dist * ray / |ray|; its depth along the optical axis (camera -z) is
    dist * |ray_z| / |ray|. camera: a row of metadata_camera_parameters.csv or M_cam_from_uv.
    NaN distances stay NaN.
    """
    dist_HW = np.asarray(dist_HW, dtype=np.float64)
    ray_HW3 = hypersim_rays(camera, *dist_HW.shape)
    x, y, z = ray_HW3[..., 0], ray_HW3[..., 1], ray_HW3[..., 2]
    return dist_HW * np.abs(z) / np.sqrt(x * x + y * y + z * z)


def hypersim_planar_depth_fov(dist_HW: np.ndarray, fov) -> np.ndarray:
    """The same from the horizontal field of view alone: exact for standard cameras only.

    f = W / (2 tan(fov / 2)) pixels; u, v are pixel-centre offsets from the image centre;
    planar = dist * f / |(u, v, f)|. On tilt-shift scenes this is off (up to ~6%): the rays are
    not symmetric about the image centre. fov: radians, or a camera CSV row (settings_camera_fov).
    """
    if not isinstance(fov, (int, float, np.floating)):
        fov = float(fov["settings_camera_fov"])
    dist_HW = np.asarray(dist_HW, dtype=np.float64)
    H, W = dist_HW.shape
    f = W / (2.0 * math.tan(fov / 2.0))
    u_W = np.arange(W, dtype=np.float64) + 0.5 - W / 2.0
    v_H = np.arange(H, dtype=np.float64) + 0.5 - H / 2.0
    return dist_HW * f / np.sqrt(u_W[None, :] ** 2 + v_H[:, None] ** 2 + f * f)


def hypersim_tonemap(rgb_HW3: np.ndarray, valid_HW: np.ndarray | None = None) -> np.ndarray:
    """Linear HDR colour -> float32 (H, W, 3) in [0, 1], the tone map that made HyperSim's tonemap.jpg.

    brightness = 0.3 R + 0.59 G + 0.11 B; the scale is chosen over valid pixels so that the 90th
    percentile brightness becomes 0.8 after gamma 1/2.2; out = clip((scale * rgb) ** (1/2.2), 0, 1).
    A (nearly) black image gets scale 0, as in the original; no valid pixel at all gets scale 1.
    """
    rgb = np.asarray(rgb_HW3, dtype=np.float32)  # float16 in the files: percentiles in float32
    rgb = np.nan_to_num(rgb, nan=0.0, posinf=0.0, neginf=0.0)
    gamma = 1.0 / 2.2
    brightness_HW = 0.3 * rgb[..., 0] + 0.59 * rgb[..., 1] + 0.11 * rgb[..., 2]
    b_valid = brightness_HW[valid_HW] if valid_HW is not None else brightness_HW.ravel()
    if b_valid.size == 0:
        scale = 1.0
    else:
        p90 = float(np.percentile(b_valid, 90))
        scale = 0.0 if p90 < 1e-4 else 0.8 ** (1.0 / gamma) / p90  # (scale * p90) ** gamma == 0.8
    return np.clip(np.power(np.maximum(scale * rgb, 0.0), gamma), 0.0, 1.0).astype(np.float32)


def read_hdf5(path) -> np.ndarray:
    """The array of a HyperSim HDF5 file (one dataset named "dataset"), as float32."""

    with h5py.File(path, "r") as f:
        return np.asarray(f["dataset"][()]).astype(np.float32)  # float16 on disk: widen before any maths


def hypersim_normals(normal_HW3: np.ndarray, camera) -> tuple[np.ndarray, np.ndarray]:
    """HyperSim's normal_cam.hdf5 -> (unit normals (H, W, 3) float32 in our camera frame, valid (H, W)).

    HyperSim's camera space is OpenGL's: +x right, +y up, +z backward, the camera looking down -z (github
    apple/ml-hypersim: README, "camera space"; issue #104); ours is x right, y down, z forward, so
    (x, y, z) -> (x, -y, -z). The normals are the artists' and, as the authors note (issue #26), can be
    zero, not unit length, or point away from the camera: zero or non-finite ones are invalid, the rest are
    renormalized, and those facing away from the camera (n . ray > 0, rays from hypersim_rays) are flipped.
    Invalid pixels hold 0.
    """
    n = np.asarray(normal_HW3, dtype=np.float64)
    length = np.linalg.norm(n, axis=-1)
    valid_HW = np.isfinite(length) & (length > 1e-3)
    n = np.where(valid_HW[..., None], n / np.where(valid_HW, length, 1.0)[..., None], 0.0)
    away = (n * hypersim_rays(camera, *n.shape[:2])).sum(-1) > 0
    n[away] *= -1
    return (n * np.array([1.0, -1.0, -1.0])).astype(np.float32), valid_HW


def fill_invalid_nearest(depth_HW: np.ndarray, valid_HW: np.ndarray) -> np.ndarray:
    """Give every invalid pixel the depth of the nearest valid pixel (Euclidean, in pixels).

    This is what the official DepthART code does with HyperSim's NaNs (github bulatko/DepthART,
    mde/datasets/train/hypersim.py: depth_inpaint, scipy's NearestNDInterpolator over the valid
    pixels). The VQ-VAE needs a finite map; losses and metrics should still mask these pixels
    out with "valid" (the official code marks them valid, which we do not copy).
    """
    if valid_HW.all():
        return depth_HW
    if not valid_HW.any():
        raise ValueError("no valid depth pixel to fill from")

    _, (rows, cols) = ndimage.distance_transform_edt(~valid_HW, return_indices=True)
    return depth_HW[rows, cols]


def hypersim_paths(root, scene: str, camera: str, frame_id: int) -> dict:
    img_dir = Path(root) / scene / "images"
    frame = f"frame.{frame_id:04d}"
    return {"depth": img_dir / f"scene_{camera}_geometry_hdf5" / f"{frame}.depth_meters.hdf5",
            "entity": img_dir / f"scene_{camera}_geometry_hdf5" / f"{frame}.render_entity_id.hdf5",
            "normals": img_dir / f"scene_{camera}_geometry_hdf5" / f"{frame}.normal_cam.hdf5",
            "tonemap": img_dir / f"scene_{camera}_final_preview" / f"{frame}.tonemap.jpg",
            "hdr": img_dir / f"scene_{camera}_final_hdf5" / f"{frame}.color.hdf5"}


def load_hypersim_frame(root, scene: str, camera: str, frame_id: int, camera_row, use_hdr: bool = False,
                        size: int | None = None, normals: bool = False) -> dict:
    """One frame as numpy: image (S, S, 3), planar depth (S, S) with holes filled, valid (S, S)
    [, normals (S, S, 3) from normal_cam.hdf5 (hypersim_normals), valid then also requiring a normal].

    size None keeps the native resolution. Depth and mask are resized by nearest sampling
    *before* the holes are filled (as the official code does): the fill then works on 16x fewer
    pixels at 256, and no pixel's value is ever a blend.
    """
    paths = hypersim_paths(root, scene, camera, frame_id)
    depth_HW = hypersim_planar_depth(read_hdf5(paths["depth"]), camera_row)
    valid_HW = np.isfinite(depth_HW) & (depth_HW > 0)
    if paths["entity"].exists():  # the official validity mask, where it was downloaded
        valid_HW &= read_hdf5(paths["entity"]) != -1
    if normals:
        normals_HW3, valid_n = hypersim_normals(read_hdf5(paths["normals"]), camera_row)
        valid_HW &= valid_n
    if use_hdr:
        img_HW3 = hypersim_tonemap(read_hdf5(paths["hdr"]), valid_HW)
    else:
        img_HW3 = read_image(paths["tonemap"])
    if img_HW3.shape[:2] != depth_HW.shape:
        raise ValueError(f"colour {img_HW3.shape[:2]} and depth {depth_HW.shape} sizes differ")
    if size is not None:
        img_HW3 = resize_image(img_HW3, size).permute(1, 2, 0).numpy()
        depth_HW = resize_nearest(depth_HW, size, size)
        valid_HW = resize_nearest(valid_HW, size, size)
        if normals:
            normals_HW3 = resize_nearest(normals_HW3, size, size)
    depth_HW = fill_invalid_nearest(depth_HW, valid_HW)
    frame = {"image": img_HW3, "depth": depth_HW.astype(np.float32), "valid": valid_HW}
    if normals:
        frame["normals"] = np.where(valid_HW[..., None], normals_HW3, 0.0).astype(np.float32)
    return frame


class HyperSim(torch.utils.data.Dataset):
    """HyperSim frames of one split, resized to size x size (None: native 1024 x 768).

    Image: bilinear with antialias. Depth and valid: nearest (pixel centres), so holes and
    occlusion edges never blend. Frames whose files are missing are dropped at construction
    (counted in self.missing, one summary line logged); a frame that fails to read later is
    replaced by the next one and counted in self.skipped (per process: each DataLoader worker
    keeps its own count).
    """

    def __init__(self, root, split: str = "train", size: int | None = 256, use_hdr: bool = False,
                 limit: int | None = None, normals: bool = False):
        self.root, self.split, self.size, self.use_hdr, self.normals = Path(root), split, size, use_hdr, normals
        split_csv, camera_csv = self.root / HYPERSIM_SPLIT_CSV, self.root / HYPERSIM_CAMERA_CSV
        _require_hypersim_layout(self.root, split_csv, camera_csv)
        listed, self.excluded = hypersim_frames(split_csv, split)
        self.cameras = read_hypersim_cameras(camera_csv)
        self.frames, self.missing, self.no_camera, self.skipped = [], 0, 0, 0
        colour = "hdr" if use_hdr else "tonemap"
        for scene, cam, fid in listed:
            if limit is not None and len(self.frames) >= limit:
                break
            if scene not in self.cameras:
                self.no_camera += 1
                continue
            paths = hypersim_paths(self.root, scene, cam, fid)
            if paths["depth"].is_file() and paths[colour].is_file() and (not normals or paths["normals"].is_file()):
                self.frames.append((scene, cam, fid))
            else:
                self.missing += 1
        summary = (f"HyperSim {split} at {self.root}: {len(self.frames)} frames usable of {len(listed)} public "
                   f"listed; {self.excluded} excluded as known-bad, {self.missing} missing on disk "
                   f"({'depth_meters.hdf5 / color.hdf5' if use_hdr else 'depth_meters.hdf5 / tonemap.jpg'}"
                   f"{' / normal_cam.hdf5' if normals else ''}), "
                   f"{self.no_camera} without camera parameters")
        (log.warning if self.missing or self.no_camera else log.info)(summary)
        if not self.frames:
            raise ValueError(f"no usable frames. {summary}. Expected {split_csv} listing public {split} frames "
                             f"and their files under {self.root}/SCENE/images/ in the official layout")

    def __len__(self) -> int:
        return len(self.frames)

    def load(self, i: int) -> dict:
        scene, cam, fid = self.frames[i]
        f = load_hypersim_frame(self.root, scene, cam, fid, self.cameras[scene], self.use_hdr, self.size, self.normals)
        item = {"image": torch.from_numpy(np.ascontiguousarray(f["image"].transpose(2, 0, 1))),
                "depth": torch.from_numpy(np.ascontiguousarray(f["depth"]))[None],
                "valid": torch.from_numpy(np.ascontiguousarray(f["valid"]))[None],
                "name": f"{scene}/{cam}/{fid:04d}"}
        if self.normals:
            item["normals"] = torch.from_numpy(np.ascontiguousarray(f["normals"].transpose(2, 0, 1)))
        return item

    def __getitem__(self, i: int) -> dict:
        n = len(self.frames)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} frames")
        for attempt in range(n):
            j = (i + attempt) % n
            try:
                return self.load(j)
            except (OSError, ValueError, KeyError, ImageReadError) as e:  # h5py raises OSError subclasses
                self.skipped += 1
                log.warning("HyperSim: skipping unreadable frame %s (%s: %s); %d skipped so far",
                            "/".join(map(str, self.frames[j])), type(e).__name__, e, self.skipped)
        raise RuntimeError(f"HyperSim {self.split}: none of the {n} frames could be read")


def _require_hypersim_layout(root: Path, split_csv: Path, camera_csv: Path):
    layout = (f"HyperSim's official layout: ROOT/{HYPERSIM_SPLIT_CSV}, ROOT/{HYPERSIM_CAMERA_CSV} and "
              "ROOT/SCENE/images/scene_cam_XX_{geometry_hdf5,final_preview}/frame.IIII.*")
    if not root.is_dir():
        raise FileNotFoundError(f"HyperSim root {str(root)!r} is not a directory; expected {layout}")
    for path in (split_csv, camera_csv):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; expected {layout}")


# =============================================================================================
# 4. The factory the scripts use
# =============================================================================================

DATASETS = ("synthetic", "world", "hypersim")


def make_dataset(name: str, split: str = "train", size: int | None = None, root=None,
                 length: int | None = None, use_hdr: bool = False, normals: bool = False):
    """A dataset by name: "synthetic" (the box rooms), "world" (the richer world) or "hypersim" (needs root).
    normals=True: items carry "normals" (the world always does; HyperSim reads normal_cam.hdf5; the box rooms
    have none, a ValueError).

    size: output side (None: 64 for synthetic, HyperSim's native 1024 x 768). length: number of
    synthetic scenes (default per split: DEFAULT_SYNTHETIC_LENGTH), or at most that many
    HyperSim frames.
    """
    key = str(name).lower()
    if normals and key == "synthetic":
        raise ValueError("the 'synthetic' box rooms have no normals; use 'world' (the synthetic world) or 'hypersim'")
    if key in ("synthetic", "world"):
        return SyntheticScenes(split, size=64 if size is None else size, length=length, world=key == "world")
    if key == "hypersim":
        if root is None:
            raise ValueError(f"make_dataset('hypersim') needs root=, the directory holding {HYPERSIM_SPLIT_CSV}, "
                             f"{HYPERSIM_CAMERA_CSV} and the scene folders (ROOT/ai_XXX_YYY/images/...)")
        root = Path(root)
        _require_hypersim_layout(root, root / HYPERSIM_SPLIT_CSV, root / HYPERSIM_CAMERA_CSV)
        return HyperSim(root, split, size=size, use_hdr=use_hdr, limit=length, normals=normals)
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
