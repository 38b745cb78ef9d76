"""Tests for data.py: image reading, procedural scenes, HyperSim geometry and loading, the factory."""

import io
import math
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import scenes  # noqa: E402

SHARED_HYPERSIM = ROOT.parent / "shared" / "data" / "hypersim"
SCENE, CAM = "ai_037_002", "cam_00"  # the real frame: a tilt-shift scene, depth only


# =============================================================================================
# The synthetic world as a dataset
# =============================================================================================

def test_synthetic_splits_use_disjoint_seeds():
    train = data.SyntheticScenes("train", size=16, length=5)
    val = data.SyntheticScenes("val", size=16, length=5)
    test = data.SyntheticScenes("test", size=16, length=5)
    assert [train.seed(i) for i in range(5)] == list(range(5))
    assert val.seed(0) == data.VAL_SEED_START and test.seed(0) == data.TEST_SEED_START
    assert data.SyntheticScenes("train", length=3, seed_offset=100).seed(2) == 102
    with pytest.raises(ValueError, match="range"):  # would run into the val seeds
        data.SyntheticScenes("train", length=10, seed_offset=data.VAL_SEED_START - 5)
    with pytest.raises(ValueError, match="split"):
        data.SyntheticScenes("holdout")
    assert not torch.equal(train[0]["image"], val[0]["image"])


def test_synthetic_items():
    ds = data.SyntheticScenes("val", size=24, length=3, cache=True)
    item = ds[1]
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
    assert item["depth"].shape == (1, 24, 24) and item["depth"].dtype == torch.float32
    assert item["valid"].shape == (1, 24, 24) and item["valid"].dtype == torch.bool and item["valid"].all()
    assert item["name"] == f"synthetic_val_{data.VAL_SEED_START + 1}"
    img, depth = scenes.render_scene(data.VAL_SEED_START + 1, 24)
    assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), img)
    assert ds[1] is item and ds[-2] is item  # cached
    with pytest.raises(IndexError):
        ds[3]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 24, 24)


# =============================================================================================
# HyperSim geometry
# =============================================================================================

def _standard_m(fov, H, W):
    t = math.tan(fov / 2)
    return np.diag([t, t * H / W, -1.0])


def _plane_distance(M, H, W, Z):
    """Euclidean distances to the plane z_cam = -Z (fronto-parallel, Z metres ahead) along HyperSim's rays."""
    ray = data.hypersim_rays(M, H, W)
    return Z * np.linalg.norm(ray, axis=-1) / np.abs(ray[..., 2])


def test_planar_depth_is_exact_for_a_fronto_parallel_plane():
    H, W, fov, Z = 48, 64, math.radians(60), 3.7
    M = _standard_m(fov, H, W)
    dist = _plane_distance(M, H, W, Z)
    assert dist.max() > 1.1 * Z  # the corners are clearly further away than the centre
    np.testing.assert_allclose(data.hypersim_planar_depth(dist, M), Z, rtol=1e-12)
    np.testing.assert_allclose(data.hypersim_planar_depth_fov(dist, fov), Z, rtol=1e-12)
    # The two constructions agree on a standard camera, for any distance map.
    rand = np.random.default_rng(0).uniform(1, 10, (H, W))
    np.testing.assert_allclose(data.hypersim_planar_depth(rand, M), data.hypersim_planar_depth_fov(rand, fov), rtol=1e-12)
    # The documented focal length of the standard 1024 x 768 camera.
    assert 1024 / (2 * math.tan(fov / 2)) == pytest.approx(886.81, abs=0.01)


def test_hypersim_ray_convention():
    M = _standard_m(math.radians(60), 4, 8)
    ray = data.hypersim_rays(M, 4, 8)
    assert (ray[..., 2] == -1).all()  # looking down -z
    assert ray[0, 0, 0] < 0 and ray[0, -1, 0] > 0  # u: left to right
    assert ray[0, 0, 1] > 0 and ray[-1, 0, 1] < 0  # v: top row is up
    np.testing.assert_allclose(ray[..., :2], -ray[::-1, ::-1, :2])  # pixel centres: symmetric


@pytest.fixture(scope="module")
def real_camera():
    if not SHARED_HYPERSIM.is_dir():
        pytest.skip(f"no real HyperSim sample at {SHARED_HYPERSIM}")
    return data.read_hypersim_cameras(SHARED_HYPERSIM / data.HYPERSIM_CAMERA_CSV)[SCENE]


@pytest.fixture(scope="module")
def real_distance(real_camera):
    return data.read_hdf5(SHARED_HYPERSIM / SCENE / "images" / f"scene_{CAM}_geometry_hdf5" / "frame.0000.depth_meters.hdf5")


def test_planar_depth_on_the_real_tilt_shift_frame(real_camera, real_distance):
    assert real_distance.shape == (768, 1024) and real_distance.dtype == np.float32
    planar = data.hypersim_planar_depth(real_distance, real_camera)
    fov_only = data.hypersim_planar_depth_fov(real_distance, real_camera)
    assert np.isfinite(planar).all() and (planar <= real_distance).all() and planar.min() > 0
    rel = np.abs(planar - fov_only) / planar
    print(f"\nai_037_002 planar depth {planar.min():.4f}..{planar.max():.4f} m; "
          f"fov-only formula off by max {rel.max():.4%}, mean {rel.mean():.4%}")
    assert 0.03 < rel.max() < 0.08  # the fov formula is off by up to 5.7% on tilt-shift scenes
    # The tilt-shift matrix is exact too: a plane seen through it comes back flat.
    M = data.hypersim_m_cam_from_uv(real_camera)
    assert abs(M[0, 2]) > 0.01 and abs(M[2, 1]) > 0.001  # genuinely off-axis
    np.testing.assert_allclose(data.hypersim_planar_depth(_plane_distance(M, 768, 1024, 2.5), real_camera), 2.5, rtol=1e-12)


def test_tonemap_hand_worked():
    # Grey pixels (brightness = value): nine at 0.1 and one at 1.0, plus two invalid very bright
    # ones that must not count. 90th percentile (numpy's linear rule) of the valid ten:
    # index 0.9 * 9 = 8.1 -> 0.1 + 0.1 * (1.0 - 0.1) = 0.19. scale = 0.8 ** 2.2 / 0.19, so
    # 0.1 -> (0.1 * scale) ** (1/2.2) = 0.8 * (0.1 / 0.19) ** (1/2.2) = 0.5975; 1.0 -> 1.98 -> clipped to 1.
    values = np.array([0.1] * 9 + [1.0] + [50.0, 50.0], dtype=np.float16)
    rgb = np.repeat(values[None, :, None], 3, axis=2)  # (1, 12, 3), float16 as in the files
    valid = np.array([[True] * 10 + [False, False]])
    out = data.hypersim_tonemap(rgb, valid)
    assert out.dtype == np.float32 and out.shape == (1, 12, 3)
    assert out[0, 0, 0] == pytest.approx(0.8 * (0.1 / 0.19) ** (1 / 2.2), rel=1e-3)
    assert out[0, 0, 0] == pytest.approx(0.5975, abs=1e-3)
    assert out[0, 9, 0] == 1.0 and out[0, 11, 0] == 1.0
    # A flat grey image: its 90th percentile pixel lands exactly on 0.8.
    np.testing.assert_allclose(data.hypersim_tonemap(np.full((4, 4, 3), 0.37)), 0.8, rtol=1e-6)
    assert (data.hypersim_tonemap(np.zeros((2, 2, 3))) == 0).all()  # black stays black (scale 0)


def test_fill_invalid_nearest():
    depth = np.array([[1.0, 2.0, np.nan, np.nan, 5.0]])
    valid = np.isfinite(depth)
    np.testing.assert_array_equal(data.fill_invalid_nearest(depth, valid), [[1, 2, 2, 5, 5]])
    with pytest.raises(ValueError):
        data.fill_invalid_nearest(np.full((2, 2), np.nan), np.zeros((2, 2), bool))


def test_resize_nearest_samples_centres():
    x = np.arange(36.0).reshape(6, 6)
    np.testing.assert_array_equal(data.resize_nearest(x, 2, 3), [[7, 9, 11], [25, 27, 29]])


# =============================================================================================
# HyperSim loading, on a copy of the real frame
# =============================================================================================

SPLIT_HEADER = "scene_name,camera_name,frame_id,included_in_public_release,exclude_reason,split_partition_name\n"


def _copy_tree(src: Path, dst: Path):
    # The shared tree is read-only; copy contents without its permissions so we can add files.
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name != data.HYPERSIM_SPLIT_CSV:  # 3 MB; the tests write their own small one
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def _write_hdf5(path: Path, array):
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=array)


@pytest.fixture
def hypersim_root(tmp_path):
    """A HyperSim root holding the real frame 0 (plus fake colour) and a small split CSV."""
    if not SHARED_HYPERSIM.is_dir():
        pytest.skip(f"no real HyperSim sample at {SHARED_HYPERSIM}")
    root = tmp_path / "hypersim"
    _copy_tree(SHARED_HYPERSIM, root)
    paths = data.hypersim_paths(root, SCENE, CAM, 0)
    rng = np.random.default_rng(0)
    paths["tonemap"].parent.mkdir(parents=True, exist_ok=True)
    colour = (np.linspace(0, 255, 1024)[None, :, None] * np.ones((768, 1, 3))).astype(np.uint8)
    Image.fromarray(colour).save(paths["tonemap"], quality=95)
    _write_hdf5(paths["hdr"], rng.uniform(0, 3, (768, 1024, 3)).astype(np.float16))
    (root / data.HYPERSIM_SPLIT_CSV).write_text(
        SPLIT_HEADER
        + f"{SCENE},{CAM},0,True,,train\n"
        + f"{SCENE},{CAM},1,True,,train\n"           # listed, never downloaded: missing
        + f"{SCENE},{CAM},2,False,CONTENT FLAGGED FOR REMOVAL,train\n"  # not public
        + "ai_026_013,cam_00,0,True,,train\n"          # known bad: excluded
        + "ai_004_009,cam_01,3,True,,train\n"          # known bad camera: excluded
        + "ai_004_009,cam_00,3,True,,train\n"          # good camera of that scene, but missing
        + f"{SCENE},{CAM},5,True,,val\n")
    return root


def test_hypersim_split_csv_counts_on_the_real_file():
    if not SHARED_HYPERSIM.is_dir():
        pytest.skip(f"no real HyperSim sample at {SHARED_HYPERSIM}")
    csv_path = SHARED_HYPERSIM / data.HYPERSIM_SPLIT_CSV
    train, excluded = data.hypersim_frames(csv_path, "train")
    assert len(train) + excluded == 59_543 and excluded == 700  # 100 (ai_004_009 cam_01) + 400 + 200
    assert (SCENE, CAM, 0) in train
    assert [len(data.hypersim_frames(csv_path, s)[0]) for s in ("val", "test")] == [7_386, 7_690]
    with pytest.raises(ValueError, match="split"):
        data.hypersim_frames(csv_path, "training")


def test_hypersim_loads_the_real_frame(hypersim_root, real_camera, real_distance, caplog):
    ds = data.HyperSim(hypersim_root, "train", size=None)
    assert len(ds) == 1 and ds.frames == [(SCENE, CAM, 0)]
    assert ds.missing == 2 and ds.excluded == 2
    assert "missing" in caplog.text
    item = ds[0]
    assert item["name"] == f"{SCENE}/{CAM}/0000"
    assert item["image"].shape == (3, 768, 1024) and item["image"].dtype == torch.float32
    assert item["depth"].shape == (1, 768, 1024) and item["valid"].dtype == torch.bool
    depth = item["depth"][0].numpy()
    expected = data.hypersim_planar_depth(real_distance, real_camera).astype(np.float32)
    np.testing.assert_array_equal(depth, expected)
    assert (depth <= real_distance).all() and item["valid"].all()  # this frame has no holes
    assert 0.45 < item["image"][0, 0, 512].item() < 0.55  # the fake grey ramp, mid-way


def test_hypersim_nan_depth_is_masked_and_filled(hypersim_root, real_distance):
    holey = real_distance.copy()
    holey[100:200, 300:500] = np.nan  # a "window"
    holey[0, 0] = np.inf
    _write_hdf5(data.hypersim_paths(hypersim_root, SCENE, CAM, 0)["depth"], holey.astype(np.float16))
    item = data.HyperSim(hypersim_root, "train", size=None)[0]
    depth, valid = item["depth"][0].numpy(), item["valid"][0].numpy()
    assert np.isfinite(depth).all()
    np.testing.assert_array_equal(valid, np.isfinite(holey))
    # A hole pixel takes the value of its nearest valid pixel: here the one just above the hole.
    assert depth[101, 400] == depth[99, 400]
    # Resized: the mask comes along by nearest sampling, still exactly where the depth was NaN.
    small = data.HyperSim(hypersim_root, "train", size=64)[0]
    assert small["depth"].shape == (1, 64, 64) and torch.isfinite(small["depth"]).all()
    rows = ((np.arange(64) + 0.5) * 768 / 64).astype(int)
    cols = ((np.arange(64) + 0.5) * 1024 / 64).astype(int)
    np.testing.assert_array_equal(small["valid"][0].numpy(), np.isfinite(holey)[rows][:, cols])
    assert small["image"].shape == (3, 64, 64)


def test_hypersim_render_entity_id_masks_too(hypersim_root):
    entity = np.zeros((768, 1024), np.int32)
    entity[:, :10] = -1  # no geometry in the left strip, although its distances are finite
    _write_hdf5(data.hypersim_paths(hypersim_root, SCENE, CAM, 0)["entity"], entity)
    valid = data.HyperSim(hypersim_root, "train", size=None)[0]["valid"][0].numpy()
    np.testing.assert_array_equal(valid, entity != -1)


def test_hypersim_hdr_colour_is_tone_mapped(hypersim_root):
    item = data.HyperSim(hypersim_root, "train", size=None, use_hdr=True)[0]
    hdr = data.read_hdf5(data.hypersim_paths(hypersim_root, SCENE, CAM, 0)["hdr"])
    expected = data.hypersim_tonemap(hdr, np.ones(hdr.shape[:2], bool))
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), expected)
    # 90th percentile of the brightness -> 0.8
    b = 0.3 * expected[..., 0] + 0.59 * expected[..., 1] + 0.11 * expected[..., 2]
    assert 0.7 < np.percentile(b, 90) < 0.9


def test_hypersim_unreadable_frame_is_skipped(hypersim_root):
    # Frame 5 of the same camera exists on disk but its depth file is garbage.
    paths = data.hypersim_paths(hypersim_root, SCENE, CAM, 5)
    shutil.copyfile(data.hypersim_paths(hypersim_root, SCENE, CAM, 0)["tonemap"], paths["tonemap"])
    paths["depth"].write_bytes(b"not an hdf5 file")
    csv_path = hypersim_root / data.HYPERSIM_SPLIT_CSV
    csv_path.write_text(SPLIT_HEADER + f"{SCENE},{CAM},5,True,,train\n{SCENE},{CAM},0,True,,train\n")
    ds = data.HyperSim(hypersim_root, "train", size=32)
    assert len(ds) == 2 and ds.skipped == 0
    item = ds[0]  # frame 5 fails, frame 0 stands in
    assert item["name"] == f"{SCENE}/{CAM}/0000" and ds.skipped == 1


def test_hypersim_empty_split_is_a_clear_error(hypersim_root):
    with pytest.raises(ValueError, match=r"no usable frames.*0 frames usable of 1 public.*metadata_images_split"):
        data.HyperSim(hypersim_root, "val")  # frame 5 is listed for val but not on disk
    with pytest.raises(ValueError, match="no usable frames"):
        data.make_dataset("hypersim", "test", root=hypersim_root)


# =============================================================================================
# make_dataset
# =============================================================================================

def test_make_dataset(hypersim_root, tmp_path):
    ds = data.make_dataset("synthetic", "val", size=16, length=2)
    assert len(ds) == 2 and ds[0]["image"].shape == (3, 16, 16)
    assert data.make_dataset("Synthetic", "test")[0]["depth"].shape == (1, 64, 64)  # default size
    hs = data.make_dataset("hypersim", "train", size=32, root=hypersim_root)
    assert hs[0]["depth"].shape == (1, 32, 32)
    with pytest.raises(ValueError, match="synthetic, world, hypersim"):
        data.make_dataset("nyu", "train", 64)
    with pytest.raises(ValueError, match="needs root"):
        data.make_dataset("hypersim", "train", 64)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        data.make_dataset("hypersim", "train", 64, root=tmp_path / "nowhere")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="metadata_images_split_scene_v1.csv"):
        data.make_dataset("hypersim", "train", 64, root=tmp_path / "bare")


# =============================================================================================
# Reading image files
# =============================================================================================

def test_read_image_rgb_and_exif_rotation(tmp_path):
    # 40 wide x 20 high: left half red, right half blue; EXIF orientation 6 = "rotate 90 degrees
    # clockwise to display", so the photo shows 20 wide x 40 high with red on top.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20, 0] = 255
    arr[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    img = data.read_image(path)
    assert img.shape == (40, 20, 3) and img.dtype == np.float32
    assert img[5, 10, 0] > 0.9 and img[5, 10, 2] < 0.1  # top: red
    assert img[35, 10, 2] > 0.9 and img[35, 10, 0] < 0.1  # bottom: blue
    Image.fromarray(arr).save(tmp_path / "plain.png")
    np.testing.assert_array_equal(data.read_image(tmp_path / "plain.png"), arr / np.float32(255))


def test_read_image_modes(tmp_path):
    Image.new("L", (5, 4), 128).save(tmp_path / "gray.png")
    np.testing.assert_allclose(data.read_image(tmp_path / "gray.png"), 128 / 255, rtol=1e-6)

    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], np.uint8)  # (1, 3, 4)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    img = data.read_image(tmp_path / "rgba.png")
    np.testing.assert_allclose(img[0, 0], [1, 1, 1])  # fully transparent -> white
    np.testing.assert_allclose(img[0, 1], [0, 0, 1])  # opaque blue stays blue
    np.testing.assert_allclose(img[0, 2], 1 - 128 / 255, rtol=1e-6)  # half-transparent black over white

    Image.fromarray(rgba[..., [0, 3]].copy(), "LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(data.read_image(tmp_path / "la.png")[0, 0], [1, 1, 1])

    sixteen = np.array([[0, 32768, 65535]], np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode in ("I;16", "I")
    img = data.read_image(tmp_path / "deep.png")
    assert img.shape == (1, 3, 3)
    np.testing.assert_allclose(img[0, :, 0], [0, 32768 / 65535, 1], rtol=1e-6)

    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    img = data.read_image(tmp_path / "cmyk.jpg")
    assert img.shape == (8, 8, 3)
    np.testing.assert_allclose(img.mean((0, 1)), [1, 0, 0], atol=0.05)  # no ink but magenta + yellow = red

    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    pal.putdata([0, 1, 2])
    pal.save(tmp_path / "palette.png")
    np.testing.assert_allclose(data.read_image(tmp_path / "palette.png")[0], np.eye(3))
    pal.save(tmp_path / "palette_t.png", transparency=1)  # green is the transparent entry
    np.testing.assert_allclose(data.read_image(tmp_path / "palette_t.png")[0], [[1, 0, 0], [1, 1, 1], [0, 0, 1]])

    Image.fromarray(np.full((2, 3), 0.25, np.float32), "F").save(tmp_path / "float.tif")
    np.testing.assert_allclose(data.read_image(tmp_path / "float.tif"), 0.25)


def _png_header_only(width, height) -> bytes:
    """A PNG that declares width x height RGB pixels but carries no image data (a bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_read_image_bad_inputs(tmp_path):
    def expect(path, why, **kw):
        with pytest.raises(data.ImageReadError, match=why) as e:
            data.read_image(path, **kw)
        assert str(path) in str(e.value)

    expect(tmp_path / "nope.png", "no such file")
    expect(tmp_path, "directory")
    (tmp_path / "empty.jpg").write_bytes(b"")
    expect(tmp_path / "empty.jpg", "empty")
    (tmp_path / "notes.png").write_text("this is not a picture\n")
    expect(tmp_path / "notes.png", "not an image")

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for ext, kw in (("png", {}), ("jpg", {"quality": 90})):
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, format="PNG" if ext == "png" else "JPEG", **kw)
        cut = tmp_path / f"truncated.{ext}"
        cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        expect(cut, "truncated")

    limit_before = Image.MAX_IMAGE_PIXELS
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(20_000, 20_000))  # 4e8 pixels claimed in 57 bytes
    expect(bomb, "pixels")
    bomb.write_bytes(_png_header_only(12_000, 10_000))  # 1.2e8: only PIL's warning range
    expect(bomb, "pixels")
    Image.fromarray(noise[:20, :20]).save(tmp_path / "small.png")
    expect(tmp_path / "small.png", "decompression bomb", max_pixels=100)
    assert Image.MAX_IMAGE_PIXELS == limit_before  # PIL's global is restored


def test_resize_helpers():
    img = np.random.default_rng(0).uniform(0, 1, (30, 40, 3)).astype(np.float32)
    out = data.resize_image(img, 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    np.testing.assert_allclose(data.resize_image(np.full((30, 40, 3), 0.3, np.float32), 16), 0.3, rtol=1e-6)
    square = img[:30, :30]
    assert torch.equal(data.resize_image(square, 30), torch.from_numpy(square).permute(2, 0, 1))  # same size: untouched
    depth = np.linspace(1, 2, 16 * 16, dtype=np.float32).reshape(16, 16)
    back = data.resize(depth, 30, 40)
    assert isinstance(back, np.ndarray) and back.shape == (30, 40) and 1 <= back.min() and back.max() <= 2
    t = data.resize(torch.from_numpy(depth)[None, None].repeat(2, 1, 1, 1), 30, 40)
    assert t.shape == (2, 1, 30, 40) and torch.allclose(t[0, 0], torch.from_numpy(back))
    assert data.resize(torch.from_numpy(depth)[None], 8, 8).shape == (1, 8, 8)


def test_world_items_mask_the_sky_and_fill_it_far():
    ds = data.SyntheticScenes("val", size=24, length=12, world=True)
    items = [ds[i] for i in range(len(ds))]
    assert {tuple(it["normals"].shape) for it in items} == {(3, 24, 24)}
    skies = [it for it in items if not it["valid"].all()]
    assert skies, "no outdoor scene among 12 seeds"
    for it in skies:
        d, v = it["depth"][0], it["valid"][0]
        assert torch.isfinite(d).all() and (d[~v] == d[v].max()).all()  # far where nothing was hit


def test_disk_cache_reads_back_what_rendering_gives_and_resumes(tmp_path):
    live = data.SyntheticScenes("train", size=16, length=6, world=True)
    cached = data.SyntheticScenes("train", size=16, length=6, world=True, disk_cache=tmp_path)
    for i in range(6):
        a, b = live[i], cached[i]
        assert torch.allclose(a["image"], b["image"], atol=0.5 / 255 + 1e-6)  # stored as uint8
        assert torch.allclose(a["depth"], b["depth"], rtol=1e-3)             # stored as float16
        assert torch.equal(a["valid"], b["valid"])
        assert torch.allclose(a["normals"], b["normals"], atol=0.5 / 127 + 1e-6)
    folder = next(tmp_path.iterdir())
    done = np.load(folder / "done.npy", mmap_mode="r+")
    done[3] = False  # as if interrupted before scene 3 was written
    image = np.load(folder / "image.npy", mmap_mode="r+")
    image[3] = 0
    done.flush(), image.flush()
    again = data.SyntheticScenes("train", size=16, length=6, world=True, disk_cache=tmp_path)
    assert torch.allclose(again[3]["image"], live[3]["image"], atol=0.5 / 255 + 1e-6)  # scene 3 rendered again


def test_a_share_of_subject_scenes_replaces_only_that_share_and_caches_apart(tmp_path):
    world = data.SyntheticScenes("train", size=16, length=40, world=True)
    mixed = data.SyntheticScenes("train", size=16, length=40, world=True, subjects=0.3)
    changed = [i for i in range(40) if not torch.equal(world[i]["image"], mixed[i]["image"])]
    assert 4 <= len(changed) <= 20, changed  # 12 expected of 40
    for i in set(range(40)) - set(changed):
        assert torch.equal(world[i]["depth"], mixed[i]["depth"])  # the others stay the world's own scenes
    for share in (0.3, 0.6):
        data.SyntheticScenes("train", size=8, length=2, world=True, subjects=share, disk_cache=tmp_path)
    data.SyntheticScenes("train", size=8, length=2, world=True, disk_cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3  # each mix its own cache: none reads another's scenes
    with pytest.raises(ValueError, match="subjects"):
        data.SyntheticScenes("train", size=8, length=2, subjects=0.3)  # the box rooms have no subject scenes


# =============================================================================================
# HyperSim surface normals (normal_cam.hdf5 beside the depth file, in the official layout)
# =============================================================================================

def _hypersim_normal_fixture():
    """(768, 1024, 3) float16 normals in HyperSim's camera space (+x right, +y up, +z toward the viewer):
    top half a wall facing the camera (0, 0, 1), bottom quarter a floor (0, 1, 0), with the artist errors
    of apple/ml-hypersim issue #26: a block pointing away (0, 0, -1), a block of zeros, a block of NaN, a
    block of length 2, and a wall tilted 30 degrees about the vertical axis."""
    n = np.zeros((768, 1024, 3), np.float32)
    n[:384, :, 2] = 1.0
    n[576:, :, 1] = 1.0
    n[384:576] = [math.sin(math.radians(30)), 0.0, math.cos(math.radians(30))]
    n[0:10, 0:10] = [0.0, 0.0, -1.0]   # inward-pointing: flipped by the reader
    n[0:10, 20:30] = 0.0               # zero: invalid
    n[0:10, 40:50] = np.nan            # no geometry: invalid
    n[0:10, 60:70] = [0.0, 0.0, 2.0]   # not unit length: renormalized
    return n.astype(np.float16)


def test_hypersim_normals_convention(real_camera):
    normals, valid = data.hypersim_normals(_hypersim_normal_fixture(), real_camera)
    assert normals.dtype == np.float32 and normals.shape == (768, 1024, 3)
    assert not valid[0:10, 20:30].any() and not valid[0:10, 40:50].any() and valid.sum() == 768 * 1024 - 200
    assert (normals[~valid] == 0).all()
    np.testing.assert_allclose(normals[100, 500], [0, 0, -1], atol=1e-6)    # wall: faces the camera, z forward
    np.testing.assert_allclose(normals[700, 500], [0, -1, 0], atol=1e-6)    # floor: up is -y (y down)
    np.testing.assert_allclose(normals[5, 5], [0, 0, -1], atol=1e-6)        # pointed away: flipped
    np.testing.assert_allclose(normals[5, 65], [0, 0, -1], atol=1e-6)       # length 2: renormalized
    s, c = math.sin(math.radians(30)), math.cos(math.radians(30))
    np.testing.assert_allclose(normals[450, 500], [s, 0, -c], atol=2e-3)    # tilt keeps x, flips z (float16)
    np.testing.assert_allclose(np.linalg.norm(normals[valid], axis=-1), 1, atol=1e-6)


def test_hypersim_reads_normal_cam_beside_the_depth(hypersim_root, real_camera):
    paths = data.hypersim_paths(hypersim_root, SCENE, CAM, 0)
    assert paths["normals"] == paths["depth"].with_name("frame.0000.normal_cam.hdf5")
    with pytest.raises(ValueError, match="no usable frames"):  # normals asked for, none downloaded
        data.HyperSim(hypersim_root, "train", size=64, normals=True)
    _write_hdf5(paths["normals"], _hypersim_normal_fixture())
    ds = data.make_dataset("hypersim", "train", size=64, root=hypersim_root, normals=True)
    item = ds[0]
    assert item["normals"].shape == (3, 64, 64) and item["normals"].dtype == torch.float32
    valid = item["valid"][0]
    assert not valid[0, 1] and valid[0, 0]  # the zero block at the top left (nearest sampling at 64 px)
    np.testing.assert_allclose(item["normals"][:, 10, 32].numpy(), [0, 0, -1], atol=1e-6)
    np.testing.assert_allclose(item["normals"][:, 60, 32].numpy(), [0, -1, 0], atol=1e-6)
    assert (item["normals"][:, ~valid] == 0).all()
    assert "normals" not in data.HyperSim(hypersim_root, "train", size=64)[0]  # depth-only readers are unchanged
    with pytest.raises(ValueError, match="box rooms have no normals"):
        data.make_dataset("synthetic", normals=True)


def test_photo_textures_reach_the_scenes_and_cache_apart(tmp_path):
    from conftest import photo_folder
    folder = photo_folder(tmp_path / "photos")
    plain = data.SyntheticScenes("train", size=16, length=6, world=True)
    photos = data.SyntheticScenes("train", size=16, length=6, world=True, photos=folder)
    assert photos.photos.sha256 == scenes.photo_textures(folder).sha256
    assert any(not torch.equal(plain[i]["image"], photos[i]["image"]) for i in range(6))
    assert all(torch.equal(plain[i]["depth"], photos[i]["depth"]) for i in range(6))
    cached = data.SyntheticScenes("train", size=16, length=6, world=True, photos=folder, disk_cache=tmp_path / "c")
    data.SyntheticScenes("train", size=16, length=6, world=True, disk_cache=tmp_path / "c")
    assert len(list((tmp_path / "c").iterdir())) == 2  # each texture set its own cache: none reads another's scenes
    assert torch.allclose(cached[5]["image"], photos[5]["image"], atol=0.5 / 255 + 1e-6)  # rendered with the folder
    with pytest.raises(ValueError, match="world=True"):
        data.SyntheticScenes("train", size=8, length=2, photos=folder)
    with pytest.raises(ValueError, match="no such folder"):
        data.SyntheticScenes("train", size=8, length=2, world=True, photos=tmp_path / "missing")
