"""The synthetic world (scenes.py): the old rooms (render_scene, frozen) and the world (render_world)."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scenes  # noqa: E402
from conftest import photo_folder  # noqa: E402


def test_render_scene_is_deterministic_by_seed():
    img_a, depth_a = scenes.render_scene(7)
    img_b, depth_b = scenes.render_scene(7)
    img_c, depth_c = scenes.render_scene(8)
    assert np.array_equal(img_a, img_b) and np.array_equal(depth_a, depth_b)
    assert not np.array_equal(img_a, img_c) and not np.array_equal(depth_a, depth_c)


@pytest.mark.parametrize("size", [32, 64])
def test_render_scene_outputs(size):
    for seed in range(10):
        img, depth = scenes.render_scene(seed, size=size)
        assert img.shape == (size, size, 3) and img.dtype == np.float32
        assert depth.shape == (size, size) and depth.dtype == np.float32
        assert img.min() >= 0 and img.max() <= 1 and img.std() > 0.02  # not a flat image
        assert np.isfinite(depth).all() and depth.min() > 0
        assert depth.max() < 12  # inside a room of at most 8 x 8 x 4 m: the diagonal is < 12 m


def test_images_carry_depth_edges():
    # Image gradients should be much stronger where the depth jumps (occlusion edges, room corners).
    ratios = []
    for seed in range(20):
        img, depth = scenes.render_scene(seed)
        grad_img = np.abs(np.diff(img.mean(2), axis=1))
        jump = np.abs(np.diff(depth, axis=1)) / depth[:, 1:] > 0.1
        if jump.sum() > 5:
            ratios.append(grad_img[jump].mean() / grad_img[~jump].mean())
    assert len(ratios) >= 10 and np.median(ratios) > 2, ratios


def _empty_room(solids=()):
    plain = scenes.Material(np.array([0.8, 0.8, 0.8]))
    return scenes.Scene(np.array([6.0, 4.0, 3.0]), list(solids), [plain] * 6,
                      [(np.array([3.0, 2.0, 2.9]), 2.0)], ambient=0.2)


def _head_on_camera(fov_deg=30.0):
    # At (1, 2, 1.5) looking along +x at the wall x = 6, 5 m away; with a 30 degree fov the view
    # spans +-5 tan(15 deg) = +-1.34 m, inside the 4 m x 3 m wall.
    return scenes.Camera(np.array([1.0, 2.0, 1.5]), yaw=0.0, pitch=0.0, fov=math.radians(fov_deg))


def test_depth_is_planar_for_a_wall_seen_head_on():
    img, depth = scenes.render(_empty_room(), _head_on_camera(), size=32)
    np.testing.assert_allclose(depth, 5.0, rtol=1e-5)  # planar depth: constant across the wall
    # ...whereas the Euclidean distance grows towards the corners of the image.
    d = scenes.camera_rays(_head_on_camera(), 32)
    euclid = 5.0 * np.linalg.norm(d, axis=0).reshape(32, 32)
    assert euclid.max() / euclid.min() > 1.03
    assert img.std() > 0  # lit unevenly by the point light


@pytest.mark.parametrize("solid, front", [
    (scenes.Solid("box", np.array([4.0, 2.0, 1.5]), np.array([0.5, 0.5, 0.5])), 3.5),
    (scenes.Solid("box", np.array([4.0, 2.0, 1.5]), np.array([0.5, 0.5, 0.5]), yaw=math.pi / 4), 4 - math.sqrt(0.5)),
    (scenes.Solid("sphere", np.array([4.0, 2.0, 1.5]), np.full(3, 0.5)), 3.5),
    (scenes.Solid("cylinder", np.array([4.0, 2.0, 1.0]), np.array([0.5, 0.5, 1.0])), 3.5),
])
def test_solids_occlude_with_exact_depth(solid, front):
    solid.material = scenes.Material(np.array([0.9, 0.1, 0.1]))
    img, depth = scenes.render(_empty_room([solid]), _head_on_camera(), size=33)
    assert depth[16, 16] == pytest.approx(front - 1.0, rel=1e-5)  # centre ray hits the nearest point
    assert depth[0, 0] == pytest.approx(5.0, rel=1e-5)  # the corner ray still sees the wall
    assert img[16, 16, 0] > 2 * img[16, 16, 1]  # and the solid's red shows there


# --- The old rooms must not change: the shipped model was trained on them.

OLD_ROOM_SHA256 = {  # render_scene(seed, size) for seeds 0..20 and 10_000_000..10_000_020, img then depth
    64: "a48ea440993dee220996200a4f54207c4c57fb13752400cd499697e05c7a89a3",
    32: "8abdfa2a197af2ba1c5597befed37cf08c1f3a045de7c66eb0a1f99a4c2f9ac0",
}


@pytest.mark.parametrize("size", [64, 32])
def test_old_rooms_are_bit_identical(size):
    import hashlib
    h = hashlib.sha256()
    for seed in list(range(21)) + list(range(10_000_000, 10_000_021)):
        img, depth = scenes.render_scene(seed, size)
        h.update(img.tobytes())
        h.update(depth.tobytes())
    assert h.hexdigest() == OLD_ROOM_SHA256[size]


# --- The world (render_world)

def _camera_dirs(fov, h, w):
    """Camera-frame ray directions (H, W, 3) through the pixel centres, z = 1."""
    f = w / (2 * math.tan(fov / 2))
    x = (np.arange(w) + 0.5 - w / 2) / f
    y = (np.arange(h) + 0.5 - h / 2) / f
    return np.stack(np.broadcast_arrays(x[None, :], y[:, None], np.ones((h, w))), -1)


# sha256 of render_world's default world (image, depth, normals, valid, family) for 12 training and 4 validation
# seeds at 32 x 32 (every family), and of 3 subject scenes at 24 x 24: options added to the world (photo textures)
# must leave the world of a run that does not ask for them bit-identical.
WORLD_SHA256 = "f416d47e16ed8f8f508d41d154a9a6dae634653bf630fd2a7e28277d64c2e570"
SUBJECT_SHA256 = "7fc580525ce75d94f7d9afa2ed2e7e338eab12bd8a33080151b63806d873497b"


def world_sha256(seeds=tuple(range(12)) + tuple(range(10_000_000, 10_000_004)), size=32, **kw) -> str:
    import hashlib
    h = hashlib.sha256()
    for seed in seeds:
        r = scenes.render_world(seed, size, **kw)
        for key in ("image", "depth", "normals", "valid"):
            h.update(r[key].tobytes())
        if "family" not in kw:
            h.update(r["family"].encode())
    return h.hexdigest()


def test_the_default_world_is_bit_identical():
    assert world_sha256() == WORLD_SHA256
    assert world_sha256(range(3), 24, family="subject") == SUBJECT_SHA256


def test_world_is_deterministic_by_seed():
    a, b, c = scenes.render_world(3, 40), scenes.render_world(3, 40), scenes.render_world(4, 40)
    for key in ("image", "depth", "normals", "valid"):
        assert np.array_equal(a[key], b[key]), key
    assert a["family"] == b["family"] and not np.array_equal(a["image"], c["image"])


@pytest.mark.parametrize("size, hw", [(40, (40, 40)), ((32, 48), (32, 48))])
def test_world_shapes_and_dtypes(size, hw):
    out = scenes.render_world(5, size)
    assert out["image"].shape == hw + (3,) and out["image"].dtype == np.float32
    assert out["depth"].shape == hw and out["depth"].dtype == np.float32
    assert out["normals"].shape == hw + (3,) and out["normals"].dtype == np.float32
    assert out["valid"].shape == hw and out["valid"].dtype == bool
    assert out["family"] in scenes.FAMILIES


@pytest.mark.parametrize("family", scenes.FAMILIES + ("subject",))
def test_every_family_renders_valid_geometry(family):
    for seed in range(3):
        out = scenes.render_world(seed, (36, 48), family=family)
        img, depth, normals, valid = out["image"], out["depth"], out["normals"], out["valid"]
        assert out["family"] == family and valid.mean() > 0.3
        assert img.min() >= 0 and img.max() <= 1 and img.std() > 0.02
        assert np.isfinite(depth).all() and (depth[valid] > 0).all() and (depth[~valid] == 0).all()
        np.testing.assert_allclose(np.linalg.norm(normals[valid], axis=-1), 1, atol=1e-4)
        assert (normals[~valid] == 0).all()


def test_subject_scenes_put_something_near_in_front_of_a_farther_background():
    assert "subject" not in scenes.FAMILIES  # the world never draws it by itself (train.py --subjects opts in)
    nearer = []
    for seed in range(8):
        out = scenes.render_world(seed, 48, family="subject", augment=False)
        depth, valid = out["depth"], out["valid"]
        assert out["family"] == "subject"
        centre = depth[16:32, 16:32][valid[16:32, 16:32]]
        border = np.concatenate([depth[:6][valid[:6]], depth[:, :6][valid[:, :6]], depth[:, -6:][valid[:, -6:]]])
        assert centre.size and centre.min() < 3.5  # the subject: within a few metres
        nearer.append(np.median(centre) < np.median(border) if border.size else True)
    # aimed at with jitter, the subject can miss the exact centre now and then, or stand against a near wall
    assert np.mean(nearer) >= 0.75, nearer


def test_normals_face_the_camera_exactly():
    rng = np.random.default_rng(0)
    scene, camera = scenes.room_family(rng)
    out = scenes.shade(scene, camera, (30, 40))
    rays = _camera_dirs(camera.fov, 30, 40)
    assert ((out["normals"] * rays).sum(-1)[out["valid"]] < 0).all()


def _ground_scene():
    ground = scenes.Solid("box", np.array([0.0, 0.0, -0.5]), np.array([100.0, 100.0, 0.5]), 0.0,
                          scenes.Material(np.array([0.5, 0.6, 0.4]), texture="grass", tex_scale=1.0))
    sun = scenes.Light(np.array([0.3, 0.2, -1.0]) / np.linalg.norm([0.3, 0.2, -1.0]), 2.0, directional=True)
    return scenes.Scene(None, [ground], [], [sun], sky=np.array([[0.8, 0.8, 0.9], [0.3, 0.5, 0.9]]))


def test_normals_match_the_plane_fitted_to_depth():
    # A tilted, rolled camera above a flat ground: back-project the depth, fit a plane, compare.
    camera = scenes.Camera(np.array([0.0, 0.0, 1.5]), yaw=0.4, pitch=-0.5, fov=math.radians(70), roll=0.2)
    out = scenes.shade(_ground_scene(), camera, (40, 48))
    valid = out["valid"]
    assert 0.3 < valid.mean() < 1.0  # the ground below, the sky above the (tilted) horizon
    pts = (_camera_dirs(camera.fov, 40, 48) * out["depth"][..., None])[valid]
    centred = pts - pts.mean(0)
    normal = np.linalg.svd(centred, full_matrices=False)[2][-1]
    normal *= -np.sign(normal @ pts.mean(0))  # towards the camera
    np.testing.assert_allclose(out["normals"][valid], np.broadcast_to(normal, pts.shape), atol=1e-3)
    np.testing.assert_allclose(np.abs(centred @ normal).max(), 0, atol=1e-3)  # planar, exactly
    np.testing.assert_allclose(normal, camera.rotation().T @ [0, 0, 1], atol=1e-4)


def test_world_depth_is_planar_for_a_wall_seen_head_on():
    scene = _empty_room()
    scene.lights = [scenes.Light(np.array([3.0, 2.0, 2.9]), 2.0)]
    out = scenes.shade(scene, _head_on_camera(), (24, 32))
    np.testing.assert_allclose(out["depth"], 5.0, rtol=1e-5)
    np.testing.assert_allclose(out["normals"].reshape(-1, 3), np.broadcast_to([0, 0, -1], (24 * 32, 3)), atol=1e-6)
    assert out["valid"].all()


def test_sky_is_invalid_outdoors():
    for seed in range(3):
        out = scenes.render_world(seed, 32, family="outdoor")
        sky = ~out["valid"]
        assert sky.mean() > 0.02
        assert (out["depth"][sky] == 0).all() and (out["normals"][sky] == 0).all()


def test_augmentation_changes_the_image_only():
    a, b = scenes.render_world(11, 40, augment=False), scenes.render_world(11, 40, augment=True)
    assert np.abs(a["image"] - b["image"]).mean() > 0.005
    for key in ("depth", "normals", "valid"):
        assert np.array_equal(a[key], b[key]), key


def test_culling_finds_the_same_hits():
    scene, camera = scenes.tabletop_family(np.random.default_rng(2))
    d = scenes.camera_rays(camera, (24, 32))
    t0, s0 = scenes.cast_rays(scene, camera.position, d)
    t1, s1 = scenes.cast_rays(scene, camera.position, d, cull=True)
    assert np.array_equal(t0, t1) and np.array_equal(s0, s1)


def test_textures_avoid_the_real_photograph_test_set():
    reserved = {"astronaut", "camera", "chelsea", "cat", "coffee", "rocket", "motorcycle_left",
                "motorcycle_right", "clock", "text", "horse", "logo"}
    assert not reserved & set(scenes.TEXTURES)


def test_family_weights_reweight_the_draw_without_moving_a_seeds_geometry():
    """--families: a spec becomes normalized probabilities in FAMILIES order; the default mix given explicitly
    draws the very same scene; a one-family mix draws only that family; bad specs are one clear ValueError."""
    from scenes import FAMILIES, _FAMILY_P, family_weights, render_world
    assert family_weights(None) is None and family_weights("") is None
    w = family_weights("room=2,tabletop=1")
    assert w == pytest.approx(tuple({"room": 2 / 3, "tabletop": 1 / 3}.get(f, 0.0) for f in FAMILIES))
    a, b = render_world(5, 32), render_world(5, 32, mix=_FAMILY_P)
    assert a["family"] == b["family"] and np.array_equal(a["image"], b["image"])
    only_room = family_weights("room=1")
    assert {render_world(s, 16, augment=False, mix=only_room)["family"] for s in range(6)} == {"room"}
    for bad in ("rooom=1", "room=x", "room=-1", "room=0"):
        with pytest.raises(ValueError, match="families"):
            family_weights(bad)


def test_photo_textures_change_pictures_only_and_deterministically(tmp_path):
    """render_world(photos=FOLDER): the folder's photographs lie on some surfaces (images differ), loaded lazily
    into the same mips; the same seed gives the same scene; geometry, normals and family stay the seed's; and the
    default world is untouched afterwards."""
    folder = photo_folder(tmp_path / "photos")
    photos = scenes.photo_textures(folder)
    assert len(photos.paths) == 3 and scenes.photo_textures(str(folder)) is photos  # checked and hashed once
    seeds, changed = range(6), 0
    for seed in seeds:
        a, b = scenes.render_world(seed, 24), scenes.render_world(seed, 24, photos=folder)
        c = scenes.render_world(seed, 24, photos=photos)
        for key in ("image", "depth", "normals", "valid"):
            assert np.array_equal(b[key], c[key]), key  # deterministic, folder or PhotoTextures alike
        for key in ("depth", "normals", "valid"):
            assert np.array_equal(a[key], b[key]), key  # only pictures change
        assert a["family"] == b["family"] and np.isfinite(b["image"]).all()
        assert b["image"].min() >= 0 and b["image"].max() <= 1
        changed += not np.array_equal(a["image"], b["image"])
    assert changed >= 3, changed
    used = [p for p in photos.paths if p in scenes._MIPS]
    assert used and all(scenes._MIPS[p][0].shape == (32, 32, 3) for p in used)  # 40 px wide: a 32 square
    assert all(abs(float(scenes._MIPS[p][0].mean()) - 1) < 1e-4 for p in used)  # linear, mean 1, as TEXTURES
    assert world_sha256(range(3), 24, family="subject") == SUBJECT_SHA256  # no folder: the world as before


def test_bad_photo_folders_are_one_line_errors(tmp_path):
    import json
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("not a picture")
    listed = photo_folder(tmp_path / "listed", 2)
    (listed / "manifest.json").write_text(json.dumps({"files": [{"name": "photo0.png", "sha256": "0" * 64}]}))
    for folder, message in ((tmp_path / "missing", "no such folder"), (tmp_path / "empty", "no .png or .jpg"),
                            (tmp_path / "junk", "a.png is not a picture"),
                            (listed, r"photo1.png is missing, unlisted or changed against its manifest.json \(2 such\)")):
        with pytest.raises(ValueError, match=message) as e:
            scenes.photo_textures(folder)
        assert str(e.value).startswith(f"textures {folder}: ") and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no such folder"):
        scenes.render_world(0, 8, photos=tmp_path / "missing")
