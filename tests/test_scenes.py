"""The synthetic world (scenes.py): determinism, exact planar depth, occlusion, image cues."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scenes  # noqa: E402


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
