"""The synthetic world: procedural scenes rendered by vectorized ray casting, with exact depth.

Two generations live here, on one ray caster (camera_rays, cast_rays, the analytic
intersections of boxes, spheres and upright cylinders, surface_normal):

* render_scene(seed, size) -> (img, depth): the old flat-coloured box rooms. The shipped model
  was trained on them, so they are frozen: the same seed gives bit-identical arrays
  (tests/test_scenes.py keeps their sha256). Do not change render() or random_scene().
* render_world(seed, size, family=None, augment=True) -> dict with "image" (H, W, 3) float32
  [0, 1], "depth" (H, W) float32 planar metres, "normals" (H, W, 3) float32 unit camera-frame
  normals facing the camera, "valid" (H, W) bool (False on sky; depth and normals are 0 there),
  "family" str. Families (planar depth, 1st-99th percentile): "room" furnished rooms (0.9-8 m),
  "corridor" long and narrow (0.4-18 m, up to 40), "tabletop" a look down at objects on a table
  (0.35-4.6 m), "outdoor" a street of buildings, trees and poles under a sky (2-115 m, up to 300),
  "box_room" the old rooms shaded the new way (0.65-7 m); drawn only when asked for, "subject" a
  person or an object 0.35-3 m away in front of a room or a street (data.SyntheticScenes(subjects=S)).
  Surfaces carry photographs from skimage.data (box-projected in metres, so texture density falls
  with distance), on request also those of a folder (photos=, PhotoTextures), or procedural patterns;
  1-3 point or directional lights all cast shadows; the camera has random height, pitch, roll and
  a 40-90 degree horizontal fov (subject scenes 25-65); augment adds exposure, white balance,
  gamma, blur, sensor noise and JPEG, from its own random stream (the geometry never moves).

Deterministic by seed on any machine with the same numpy. data.SyntheticScenes wraps
render_scene and render_world as datasets with disjoint seed ranges per split. It imports
numpy, and for the world skimage.data (textures), scipy.ndimage (blur) and PIL (JPEG).
"""
from __future__ import annotations

import colorsys
import contextvars
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage import data as skdata  # photographs that scikit-image ships: the world's textures
#
# A box-shaped room with a few solids, seen by a pinhole camera from inside, rendered by casting
# every pixel's ray at once with numpy and intersecting each primitive analytically. The image
# carries the cues a monocular depth model can learn from: Lambertian shading and light
# fall-off, shadows, texture gradients on the floor and walls, perspective of the room's edges,
# occlusion boundaries, and a little distance fog. The depth is exact planar depth.
#
# World frame: metres, z up, the room spans [0, Dx] x [0, Dy] x [0, Dz] (outdoors: no room, the
# ground is the top z = 0 of a 600 m box around the camera, which stands near the origin).
# Camera frame: x right, y down, z forward (the optical axis). Rays are scaled so that their
# camera-z component is 1, which makes the ray parameter t at a hit equal the planar depth.
#
# render_world speed (anti-aliased, augmented, all families mixed), scenes/s of CPU time on one
# thread: 100 at 64 x 64, 62 at 96 x 96, 37 at 128 x 128, measured with
#   OMP_NUM_THREADS=1 python -c "import scenes,time; scenes.render_world(0); t=time.process_time(); [scenes.render_world(s, 128) for s in range(200)]; print(200/(time.process_time()-t))"
# (per family at 128: room ~32, tabletop ~36, corridor ~39, outdoor ~44, box_room ~65).
#
# render_scene speed at 64 x 64 with anti-aliasing, one thread: 400-450 scenes/s of CPU time (270-300/s wall clock on
# a 2-core machine that other jobs were loading), measured with
#   OMP_NUM_THREADS=1 python -c "import scenes,time; t=time.process_time(); [scenes.render_scene(s) for s in range(1000)]; print(1000/(time.process_time()-t))"

ROOM_FACES = ("wall_x0", "wall_x1", "wall_y0", "wall_y1", "floor", "ceiling")  # surface ids 0..5
_EPS = 1e-4  # minimum hit distance, so a ray does not hit the surface it starts on


@dataclass
class Camera:
    """A pinhole camera with square pixels and the principal point at the image centre."""

    position: np.ndarray  # (3,) metres
    yaw: float            # radians; 0 looks along +x, positive turns towards +y
    pitch: float          # radians; positive looks up
    fov: float            # radians, full horizontal field of view
    roll: float = 0.0     # radians; positive turns the image clockwise (the horizon tilts up to the right)

    def rotation(self) -> np.ndarray:
        """(3, 3) world-from-camera rotation: its columns are camera x (right), y (down), z (forward)."""
        cy, sy, cp, sp = math.cos(self.yaw), math.sin(self.yaw), math.cos(self.pitch), math.sin(self.pitch)
        forward = np.array([cp * cy, cp * sy, sp])
        right = np.array([sy, -cy, 0.0])
        down = np.cross(forward, right)
        if self.roll:  # turn right and down about the optical axis
            c, s = math.cos(self.roll), math.sin(self.roll)
            right, down = c * right + s * down, c * down - s * right
        return np.stack([right, down, forward], axis=1)


@dataclass
class Material:
    """Base colour(s) and a procedural pattern evaluated at the 3-D hit point (a solid texture)."""

    color: np.ndarray                 # (3,) linear RGB
    color2: np.ndarray | None = None  # (3,) second colour of the pattern
    pattern: str = "plain"            # plain | checker | stripes | wood | tiles | noise
    scale: float = 0.5                # pattern period in metres
    phase: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) shifts the pattern
    axis: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))  # stripes/wood direction
    # The world's photo textures (render_world only; the old rooms ignore these fields):
    texture: str | None = None        # a TEXTURES name or a photograph's path (PhotoTextures), mapped by box
                                      # projection; replaces the pattern
    tex_scale: float = 1.0            # metres per texture tile
    tex_angle: float = 0.0            # radians; turns the texture in the face's plane
    contrast: float = 1.0             # 0: flat colour; 1: the photo's own contrast


@dataclass
class Solid:
    """A box (optionally turned about z), a sphere, or an upright cylinder."""

    kind: str             # "box" | "sphere" | "cylinder"
    center: np.ndarray    # (3,) centre of the solid
    half: np.ndarray      # (3,) box half-extents; sphere: half[0] = radius; cylinder: half[0] = radius, half[2] = half height
    yaw: float = 0.0      # boxes only: rotation about the vertical axis through the centre
    material: Material | None = None


@dataclass
class Scene:
    """Everything render() needs besides the camera."""

    room: np.ndarray                       # (3,) Dx, Dy, Dz in metres
    solids: list = field(default_factory=list)
    room_materials: list = field(default_factory=list)  # one Material per ROOM_FACES entry
    lights: list = field(default_factory=list)          # [(position (3,), intensity)], lights[0] casts shadows; world: [Light]
    ambient: float = 0.25
    fog_density: float = 0.0               # per metre of Euclidean distance
    fog_color: np.ndarray = field(default_factory=lambda: np.full(3, 0.7))
    # render_world only: room may be None (outdoors); sky colours where rays hit nothing.
    sky: np.ndarray | None = None          # (2, 3) linear RGB at the horizon and the zenith
    ambient_up: float = 0.0                # extra ambient on up-facing surfaces (light from sky/ceiling)


def camera_rays(camera: Camera, size, corners: bool = False) -> np.ndarray:
    """World-space ray directions (3, H*W) through the pixel centres of an H x W image, row-major.

    size: n (square) or (H, W); the focal length comes from the horizontal fov. With
    corners=True: the (H+1) x (W+1) rays through the pixel corners instead (anti-aliasing).
    Each direction has camera-z component 1 (it is R @ (x, y, 1)), so the hit parameter t is the
    planar depth and t * |dir| is the Euclidean distance. Rays are stored component-major
    (one contiguous row per axis), which is what makes the numpy ray caster fast.
    """
    h, w = _hw(size)
    f = w / (2.0 * math.tan(camera.fov / 2.0))  # focal length in pixels
    extra, shift = (1, 0.0) if corners else (0, 0.5)
    cx = (np.arange(w + extra, dtype=np.float64) + shift - w / 2.0) / f  # in units of the focal length
    cy = (np.arange(h + extra, dtype=np.float64) + shift - h / 2.0) / f
    x_N, y_N = np.tile(cx, len(cy)), np.repeat(cy, len(cx))  # x varies along a row, y down the rows
    R = camera.rotation()
    d_3N = R[:, 0:1] * x_N + R[:, 1:2] * y_N + R[:, 2:3]
    return d_3N.astype(np.float32)


def _hw(size) -> tuple:
    """(H, W) from an int (square) or an (H, W) pair."""
    return (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))


# --- Analytic ray-primitive intersections: each returns t (N,), inf where the ray misses.
# --- o is a (3,) origin (camera rays) or (3, N) origins (shadow rays); d is (3, N).
# --- Scalars are taken as Python floats so that numpy keeps the float32 arrays in float32.

def _hit_room(room, o, d):
    """Rays from inside the room leave it through one face: the nearest positive exit per axis."""
    t_N = np.full(d.shape[1], np.inf, dtype=d.dtype)
    face_N = np.zeros(d.shape[1], dtype=np.int64)
    room, zero = room.astype(d.dtype), d.dtype.type(0)  # numpy scalars: np.where keeps float32
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in range(3):
            up = d[a] > 0
            ta = (np.where(up, room[a], zero) - o[a]) / d[a]
            ta[~(ta > 0)] = np.inf  # d == 0 gives -inf or nan: that axis is never left
            closer = ta < t_N
            t_N = np.where(closer, ta, t_N)
            face_N = np.where(closer, 2 * a + up, face_N)
    return t_N, face_N


def _to_box_frame(s, x, y):
    """Rotate (x, y) by -yaw: world offsets -> the box's own axes."""
    if s.yaw == 0.0:
        return x, y
    c, si = math.cos(s.yaw), math.sin(s.yaw)
    return c * x + si * y, c * y - si * x


def _hit_box(s, o, d):
    cx, cy, cz = (float(v) for v in s.center)
    lx, ly = _to_box_frame(s, o[0] - cx, o[1] - cy)
    dx, dy = _to_box_frame(s, d[0], d[1])
    t_near = t_far = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for l, dl, h in ((lx, dx, s.half[0]), (ly, dy, s.half[1]), (o[2] - cz, d[2], s.half[2])):
            inv = 1.0 / dl  # the slab test: the ray is inside all three slabs between t_near and t_far
            t1, t2 = (-float(h) - l) * inv, (float(h) - l) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            t_near = lo if t_near is None else np.maximum(t_near, lo)
            t_far = hi if t_far is None else np.minimum(t_far, hi)
    return np.where((t_near <= t_far) & (t_near > _EPS), t_near, np.inf)


def _hit_sphere(s, o, d, dd):
    r = float(s.half[0])
    ox, oy, oz = (o[i] - float(s.center[i]) for i in range(3))
    b = ox * d[0] + oy * d[1] + oz * d[2]
    c = ox * ox + oy * oy + oz * oz - r * r
    disc = b * b - dd * c
    with np.errstate(invalid="ignore"):
        t_N = (-b - np.sqrt(disc)) / dd  # the nearer root: the outside of the sphere
    return np.where(t_N > _EPS, t_N, np.inf)  # nan (no real root) compares False: a miss


def _hit_cylinder(s, o, d):
    r, h = float(s.half[0]), float(s.half[2])
    ox, oy, oz = (o[i] - float(s.center[i]) for i in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        # Side wall: a circle in the xy projection, limited to the height range.
        a = d[0] * d[0] + d[1] * d[1]
        b = ox * d[0] + oy * d[1]
        c = ox * ox + oy * oy - r * r
        t_side = (-b - np.sqrt(b * b - a * c)) / a
        t_side = np.where((t_side > _EPS) & (np.abs(oz + t_side * d[2]) <= h), t_side, np.inf)
        # Lids: the plane of the lid on the ray's origin side, inside the disc.
        lid = np.where(oz > 0, d.dtype.type(h), d.dtype.type(-h))
        t_cap = (lid - oz) / d[2]
        xc, yc = ox + t_cap * d[0], oy + t_cap * d[1]
        t_cap = np.where((t_cap > _EPS) & (xc * xc + yc * yc <= r * r), t_cap, np.inf)
    return np.minimum(t_side, t_cap)


def cast_rays(scene: Scene, o, d, solids_only: bool = False, cull: bool = False):
    """Nearest hit of each ray: t (N,) in units of |d| and the surface id (N,) of what was hit.

    o: (3,) or (3, N) origins; d: (3, N) directions. Surface ids: 0..5 the ROOM_FACES, 6 + k
    solid k, -1 nothing (only possible with solids_only, e.g. for shadow rays). With cull, each
    solid is only intersected with the rays that pass near it (same hits, found faster when
    there are many small solids; the world uses it, the old rooms do not).
    """
    o = np.asarray(o, dtype=d.dtype)
    if solids_only:
        t_N, sid_N = np.full(d.shape[1], np.inf, dtype=d.dtype), np.full(d.shape[1], -1, dtype=np.int64)
    else:
        t_N, sid_N = _hit_room(scene.room, o, d)
    dd = (d * d).sum(0) if cull else None
    for k, s in enumerate(scene.solids):
        if cull:
            idx = _rays_near(s, o, d, dd)
            if len(idx):
                ts = _hit_solid(s, o if o.ndim == 1 else o[:, idx], d[:, idx], dd[idx])
                closer = ts < t_N[idx]
                idx = idx[closer]
                t_N[idx], sid_N[idx] = ts[closer], 6 + k
            continue
        if s.kind == "sphere":
            dd = (d * d).sum(0) if dd is None else dd
            ts = _hit_sphere(s, o, d, dd)
        else:
            ts = (_hit_box if s.kind == "box" else _hit_cylinder)(s, o, d)
        closer = ts < t_N
        t_N = np.where(closer, ts, t_N)
        sid_N = np.where(closer, 6 + k, sid_N)
    return t_N, sid_N


def _hit_solid(s, o, d, dd):
    if s.kind == "sphere":
        return _hit_sphere(s, o, d, dd)
    return (_hit_box if s.kind == "box" else _hit_cylinder)(s, o, d)


def _rays_near(s, o, d, dd):
    """Indices of the rays whose line passes through the solid's bounding sphere, ahead of the origin."""
    r2 = float((s.half ** 2).sum())  # |half|: encloses a box, a sphere and a cylinder alike
    c = s.center.astype(d.dtype)
    oc = c - o if o.ndim == 1 else c[:, None] - o
    along = oc[0] * d[0] + oc[1] * d[1] + oc[2] * d[2]
    oc2 = (oc * oc).sum(0)
    # Squared distance from the centre to the line, times dd: oc2 * dd - along^2 < r2 * dd.
    near = (oc2 - r2) * dd < along * along
    near &= (along > 0) | (oc2 < r2)  # not behind the origin, unless the origin is inside
    return np.nonzero(near)[0]


def surface_normal(scene: Scene, sid: int, p_3M: np.ndarray) -> np.ndarray:
    """Unit normals (3, M) of surface sid at points on it, facing the inside of the room."""
    n_3M = np.zeros_like(p_3M)
    if sid < 6:  # room faces point inwards
        n_3M[sid // 2] = -1.0 if sid % 2 else 1.0
        return n_3M
    s = scene.solids[sid - 6]
    rel = p_3M - s.center.astype(p_3M.dtype)[:, None]
    if s.kind == "sphere":
        return rel / float(s.half[0])
    if s.kind == "cylinder":
        radial = np.sqrt(rel[0] ** 2 + rel[1] ** 2) / float(s.half[0])
        on_lid = np.abs(rel[2]) / float(s.half[2]) >= radial  # whichever boundary the point is nearer
        n_3M[0] = np.where(on_lid, 0.0, rel[0] / float(s.half[0]))
        n_3M[1] = np.where(on_lid, 0.0, rel[1] / float(s.half[0]))
        n_3M[2] = np.where(on_lid, np.sign(rel[2]), 0.0)
        return n_3M
    # Box: the face is the axis on which the point is furthest out, relative to the half-extent.
    lx, ly = _to_box_frame(s, rel[0], rel[1])
    local_3M = np.stack([lx, ly, rel[2]]) / s.half.astype(p_3M.dtype)[:, None]
    axis_M = np.argmax(np.abs(local_3M), axis=0)
    cols = np.arange(p_3M.shape[1])
    nl = np.zeros_like(p_3M)
    nl[axis_M, cols] = np.sign(local_3M[axis_M, cols])
    c, si = math.cos(s.yaw), math.sin(s.yaw)  # back to the world: rotate by +yaw
    n_3M[0], n_3M[1], n_3M[2] = c * nl[0] - si * nl[1], si * nl[0] + c * nl[1], nl[2]
    return n_3M


def _pattern(m: Material, p_3M: np.ndarray) -> np.ndarray:
    """Blend weight (M,) in [0, 1] between m.color and m.color2 at points p (a solid texture)."""
    q = (p_3M + m.phase.astype(np.float32)[:, None]) * (1.0 / m.scale)
    if m.pattern == "checker":
        return np.floor(q).sum(0) % 2
    if m.pattern == "tiles":  # floors only: a faint checker in x, y plus dark grout lines
        frac = q[:2] - np.floor(q[:2])
        grout = np.minimum(frac, 1.0 - frac).min(0) < 0.04  # near a tile edge in x or in y
        return np.where(grout, 1.0, 0.25 * (np.floor(q[:2]).sum(0) % 2))
    ax = m.axis.astype(np.float32)
    along = ax[0] * q[0] + ax[1] * q[1] + ax[2] * q[2]
    if m.pattern == "stripes":
        return (np.sin(2 * np.pi * along) > 0).astype(np.float32)
    if m.pattern == "wood":  # rings about an axis, wobbled by a slow sine: wood-grain-ish
        radial = np.sqrt(np.maximum((q * q).sum(0) - along * along, 0.0))
        rings = radial * 4.0 + 0.4 * np.sin(along * 3.0)
        return (0.5 + 0.5 * np.sin(2 * np.pi * rings)) ** 2
    if m.pattern == "noise":  # a few sines in different directions: blotchy plaster
        w = np.sin((1.7 * q[0] + 0.3 * q[1] + 1.1 * q[2]) * 2.1) + np.sin((-0.4 * q[0] + 1.9 * q[1] + 0.7 * q[2]) * 3.3)
        return 0.5 + 0.25 * w
    return np.zeros(p_3M.shape[1], dtype=np.float32)


def _scatter(dst_3N, idx, src_3M):
    for c in range(3):  # row by row: numpy's 1-D fancy assignment is several times faster than 2-D
        dst_3N[c][idx] = src_3M[c]


def render(scene: Scene, camera: Camera, size: int = 64, antialias: bool = True, rng=None):
    """Ray-cast the scene: (img (size, size, 3) float32 in [0, 1], depth (size, size) float32 metres).

    Depth is the planar depth of the ray through each pixel's centre (as HyperSim defines it), so
    pixels on an occlusion edge get the depth of one surface, never a blend of two. With
    antialias, colour is also shaded at the pixel corners and each pixel's colour is 1/2 its
    centre + 1/8 each of its four corners: a tent filter from 2 rays per pixel instead of the 4
    of 2x supersampling (corners are shared by four pixels). rng adds sensor noise when given.
    """
    o = camera.position.astype(np.float32)
    n_centre = size * size
    d = camera_rays(camera, size)
    if antialias:
        d = np.concatenate([d, camera_rays(camera, size, corners=True)], axis=1)
    t, sid = cast_rays(scene, o, d)
    p = o[:, None] + t * d  # hit points (3, N)

    # Albedo and normals. A table lookup by surface id covers plain colours and the room's
    # flat faces; solids' normals and patterned surfaces are computed on their own pixels.
    materials = list(scene.room_materials) + [s.material for s in scene.solids]
    colors_3S = np.stack([m.color for m in materials], 1).astype(np.float32)
    normals_3S = np.zeros((3, len(materials)), dtype=np.float32)
    normals_3S[[0, 0, 1, 1, 2, 2], range(6)] = [1, -1, 1, -1, 1, -1]  # room faces point inwards
    albedo = np.take(colors_3S, sid, axis=1)
    normal = np.take(normals_3S, sid, axis=1)
    counts = np.bincount(sid, minlength=len(materials))
    for k in np.nonzero(counts)[0]:
        m = materials[k]
        patterned = m.pattern != "plain" and m.color2 is not None
        if k < 6 and not patterned:
            continue
        idx = np.nonzero(sid == k)[0]
        p_k = np.take(p, idx, axis=1)
        if k >= 6:
            _scatter(normal, idx, surface_normal(scene, int(k), p_k))
        if patterned:
            w = _pattern(m, p_k)
            _scatter(albedo, idx, m.color.astype(np.float32)[:, None] * (1 - w) + m.color2.astype(np.float32)[:, None] * w)

    # Lambertian shading with a soft inverse-square fall-off; the first light casts shadows.
    light = np.full(d.shape[1], scene.ambient, dtype=np.float32)
    for j, (lp, power) in enumerate(scene.lights):
        to_l = lp.astype(np.float32)[:, None] - p
        dist2 = (to_l * to_l).sum(0)
        cos = np.maximum((normal * to_l).sum(0), 0.0) / np.sqrt(dist2)
        contrib = float(power) * cos / (1.0 + dist2 / 4.0)
        if j == 0 and scene.solids:
            idx = np.nonzero(cos > 0)[0]  # back-facing points are dark anyway: no shadow rays for them
            if len(idx):
                start = np.take(p, idx, axis=1) + 1e-3 * np.take(normal, idx, axis=1)
                ts, _ = cast_rays(scene, start, np.take(to_l, idx, axis=1), solids_only=True)
                contrib[idx[ts < 1.0]] *= 0.15  # something between the point and the light (t in units of to_l)
        light += contrib
    rgb = albedo * light

    # Mild fog: far surfaces drift towards a haze colour (aerial perspective, another depth cue).
    if scene.fog_density > 0:
        keep = np.exp(-float(scene.fog_density) * t * np.sqrt((d * d).sum(0)))
        rgb = rgb * keep + scene.fog_color.astype(np.float32)[:, None] * (1 - keep)

    img = rgb[:, :n_centre].reshape(3, size, size)
    if antialias:
        k = rgb[:, n_centre:].reshape(3, size + 1, size + 1)
        img = 0.5 * img + 0.125 * (k[:, :-1, :-1] + k[:, :-1, 1:] + k[:, 1:, :-1] + k[:, 1:, 1:])
    img = img.transpose(1, 2, 0)
    if rng is not None:
        img = img + rng.normal(0.0, 0.01, img.shape).astype(np.float32)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return img, t[:n_centre].reshape(size, size).astype(np.float32)


def _hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _random_material(rng, kind: str) -> Material:
    """Materials by role: pale walls and ceiling, wooden or tiled floors, varied objects."""
    if kind == "floor":
        if rng.random() < 0.5:  # wood planks: brown, grain along one horizontal axis
            c = _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.4, 0.7), rng.uniform(0.35, 0.7))
            ax = np.array([1.0, 0.0, 0.0]) if rng.random() < 0.5 else np.array([0.0, 1.0, 0.0])
            return Material(c, c * rng.uniform(0.55, 0.8), "wood", rng.uniform(0.3, 0.8), rng.uniform(0, 5, 3), ax)
        c = _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.45, 0.85))
        return Material(c, c * 0.45, "tiles", rng.uniform(0.3, 0.7), rng.uniform(0, 1, 3))
    if kind in ("wall", "ceiling"):
        c = _hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.6, 0.95))
        pattern = rng.choice(["plain", "noise", "stripes"], p=[0.4, 0.35, 0.25]) if kind == "wall" else "plain"
        ax = np.array([1.0, 1.0, 0.0]) if rng.random() < 0.5 else np.array([0.0, 0.0, 1.0])
        c2 = c * rng.uniform(0.75, 0.92) if pattern != "stripes" else _hsv(rng.random(), 0.3, rng.uniform(0.5, 0.9))
        return Material(c, c2, pattern, rng.uniform(0.2, 1.0), rng.uniform(0, 5, 3), ax)
    c = _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.3, 0.95))
    pattern = rng.choice(["plain", "checker", "stripes", "wood", "noise"])
    ax = rng.normal(size=3)
    return Material(c, _hsv(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95)), pattern,
                    rng.uniform(0.1, 0.5), rng.uniform(0, 5, 3), ax / np.linalg.norm(ax))


def random_scene(rng: np.random.Generator):
    """Draw a room, 1-6 solids, lights and a camera inside the room: (Scene, Camera)."""
    room = np.array([rng.uniform(3, 8), rng.uniform(3, 8), rng.uniform(2.5, 4.0)])
    # The camera first, so that solids can be kept from swallowing it.
    cam_pos = np.array([rng.uniform(0.4, room[0] - 0.4), rng.uniform(0.4, room[1] - 0.4),
                        min(rng.uniform(1.0, 2.0), room[2] - 0.3)])
    # Look towards a random point of the room at least 1.5 m away, so most views see across it.
    for _ in range(10):
        target = rng.uniform([0, 0], room[:2])
        if np.hypot(*(target - cam_pos[:2])) > 1.5:
            break
    yaw = math.atan2(target[1] - cam_pos[1], target[0] - cam_pos[0]) + rng.uniform(-0.3, 0.3)
    camera = Camera(cam_pos, yaw, math.radians(rng.uniform(-20, 10)), math.radians(rng.uniform(50, 80)))

    solids = []
    for _ in range(rng.integers(1, 7)):
        kind = rng.choice(["box", "box", "sphere", "cylinder"])
        if kind == "box":
            half = np.array([rng.uniform(0.15, 0.75), rng.uniform(0.15, 0.75), 0.5 * rng.uniform(0.3, min(2.2, room[2]))])
            reach = np.hypot(half[0], half[1])
            z = half[2]  # standing on the floor
        elif kind == "sphere":
            r = rng.uniform(0.15, 0.6)
            half, reach = np.full(3, r), r
            z = r if rng.random() < 0.7 else rng.uniform(r, room[2] - r)  # resting, or hanging like a lamp
        else:
            r = rng.uniform(0.1, 0.5)
            half = np.array([r, r, 0.5 * rng.uniform(0.3, min(2.5, room[2] - 0.3))])  # below the ceiling light
            reach, z = r, half[2]
        xy = rng.uniform(reach, np.maximum(room[:2] - reach, reach + 1e-3))
        if np.hypot(*(xy - cam_pos[:2])) < reach + 0.4:
            continue  # would contain or touch the camera; one solid fewer
        turn = rng.uniform(0, np.pi) if (kind == "box" and rng.random() < 0.5) else 0.0
        solids.append(Solid(str(kind), np.array([xy[0], xy[1], z]), half, turn, _random_material(rng, "object")))

    mats = [_random_material(rng, "wall")] * 4  # one paint for the four walls, like most rooms
    if rng.random() < 0.3:  # an accent wall
        mats[rng.integers(4)] = _random_material(rng, "wall")
    mats += [_random_material(rng, "floor"), _random_material(rng, "ceiling")]

    lights = [(np.array([rng.uniform(0.3, room[0] - 0.3), rng.uniform(0.3, room[1] - 0.3), room[2] - 0.15]),
               rng.uniform(1.5, 3.0))]
    if rng.random() < 0.5:
        lights.append((rng.uniform([0.3, 0.3, 0.5], room - 0.3), rng.uniform(0.3, 1.0)))
    scene = Scene(room, solids, mats, lights, ambient=rng.uniform(0.12, 0.3),
                  fog_density=rng.uniform(0.0, 0.04), fog_color=_hsv(rng.random(), 0.1, rng.uniform(0.5, 0.9)))
    return scene, camera


def render_scene(seed: int, size: int = 64, antialias: bool = True):
    """The procedural scene of this seed: (img (size, size, 3) float32 [0,1], depth (size, size) float32 m).

    Deterministic: the same seed gives the same arrays on any machine with the same numpy.
    """
    rng = np.random.default_rng(seed)
    scene, camera = random_scene(rng)
    return render(scene, camera, size, antialias, rng)


# =============================================================================================
# The world: render_world(seed) draws one of several scene families, textures its surfaces with
# photographs, lights it with 1-3 shadow-casting lights and returns exact planar depth, normals
# and a validity mask beside the image. It uses the same Camera, Material, Solid, Scene,
# camera_rays, cast_rays and surface_normal as the old rooms; only the shading differs.
# =============================================================================================

FAMILIES = ("room", "corridor", "tabletop", "outdoor", "box_room")

# Textures: photographs shipped inside scikit-image (on disk, no download). Images reserved for
# the real-photograph test set (astronaut, camera, chelsea, coffee, rocket, ...) must never be here.
TEXTURES = ("brick", "grass", "gravel", "coins", "moon", "hubble_deep_field", "retina",
            "immunohistochemistry", "page", "cell", "microaneurysms", "colorwheel", "checkerboard")
_TEX_SIZE = 128
_MIPS: dict = {}  # name -> [level 0 (S, S, 3), level 1 (S/2, S/2, 3), ...] float32, mean 1


def texture_mips(name: str) -> list:
    """The texture's mip pyramid, loaded once per process: linear reflectance scaled to mean 1.
    name: a TEXTURES name, or the path of a photograph of a PhotoTextures folder."""
    if name not in _MIPS:
        if name.lower().endswith(PHOTO_SUFFIXES):
            with Image.open(name) as photo:
                img = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
        else:
            img = np.asarray(getattr(skdata, name)(), dtype=np.float32) / 255.0
        img = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        s = 1 << int(math.log2(min(img.shape[:2])))  # the largest power-of-two square: tiles wrap by masking
        y0, x0 = (img.shape[0] - s) // 2, (img.shape[1] - s) // 2
        img = img[y0:y0 + s, x0:x0 + s] ** 2.2  # sRGB-ish -> linear
        while img.shape[0] > _TEX_SIZE:
            img = _halve(img)
        levels = [img / max(float(img.mean()), 1e-3)]
        while levels[-1].shape[0] > 1:
            levels.append(_halve(levels[-1]))
        _MIPS[name] = [np.ascontiguousarray(m, dtype=np.float32) for m in levels]
    return _MIPS[name]


def _halve(img_SS3):
    s = img_SS3.shape[0] // 2
    return img_SS3.reshape(s, 2, s, 2, 3).mean(axis=(1, 3))


# Photo textures from a folder, opt-in (render_world(photos=...), data.SyntheticScenes(photos=...), train.py
# --textures DIR; `python realset.py textures` builds one from 263 benchmark photographs). Of the photo-textured looks
# that PHOTO_ROLES draw, a share PHOTO_SHARE takes a photograph of the folder instead of its TEXTURES picture, keeping
# the look's tint, contrast, tile size and angle. Which ones, and which photograph, come from a random stream of their
# own ([seed, 3]): with a folder a seed keeps its geometry, lights, camera and colours, and only pictures change;
# without one the world is bit-identical to the world before photo textures (tests/test_scenes.py).
PHOTO_ROLES = ("wall", "floor", "object", "fabric", "facade", "ground")
PHOTO_SHARE = 0.5
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class PhotoTextures:
    """A folder of photographs the world can texture with (photo_textures(folder) checks and makes one).

    paths: the pictures, sorted by name; sha256: the set's identity, a hash of every picture's name and content
    (what caches and checkpoints record); manifest_sha256: that of the folder's manifest.json, None without one.
    Small and picklable: worker processes get it with the dataset and load each picture once, when first drawn."""

    folder: str
    paths: tuple
    sha256: str
    manifest_sha256: str | None = None

    def describe(self) -> dict:
        return {"folder": self.folder, "photographs": len(self.paths), "sha256": self.sha256,
                "manifest_sha256": self.manifest_sha256}


_PHOTO_SETS: dict = {}  # (folder, its files' sizes and times) -> PhotoTextures: each set is hashed once


def photo_textures(folder) -> PhotoTextures:
    """The photographs (.png, .jpg) of a folder as world textures. A ValueError of one line when the folder is missing,
    holds no picture, holds a file that is not a picture, or disagrees with its manifest.json (a file missing,
    unlisted or with another sha256)."""
    if isinstance(folder, PhotoTextures):
        return folder
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(f"textures {folder}: no such folder (python realset.py textures --out {folder} "
                         "--sources CLONES --clone builds one)")
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in PHOTO_SUFFIXES and f.is_file())
    if not files:
        raise ValueError(f"textures {folder}: no .png or .jpg pictures in it")
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files + [path / "manifest.json"] if f.exists()]
    key = (str(path.resolve()), tuple(stats))  # a file added, removed or rewritten: checked and hashed again
    if key in _PHOTO_SETS:
        return _PHOTO_SETS[key]
    digests = {}
    for f in files:
        try:
            with Image.open(f) as im:
                if min(im.size) < 1:
                    raise ValueError
        except Exception:  # noqa: BLE001 (PIL raises several kinds for a file that is not a picture)
            raise ValueError(f"textures {folder}: {f.name} is not a picture PIL can read") from None
        digests[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    manifest, manifest_sha256 = path / "manifest.json", None
    if manifest.is_file():
        raw = manifest.read_bytes()
        manifest_sha256 = hashlib.sha256(raw).hexdigest()
        try:
            listed = {f["name"]: f["sha256"] for f in json.loads(raw)["files"]}
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"textures {folder}: manifest.json does not list files with name and sha256") from None
        wrong = sorted(set(listed) ^ set(digests)) + sorted(n for n in listed if n in digests and listed[n] != digests[n])
        if wrong:
            raise ValueError(f"textures {folder}: {wrong[0]} is missing, unlisted or changed against its manifest.json "
                             f"({len(wrong)} such); rebuild the folder")
    identity = hashlib.sha256("".join(f"{n} {d}\n" for n, d in digests.items()).encode()).hexdigest()
    photos = PhotoTextures(str(path.resolve()), tuple(str(f.resolve()) for f in files), identity, manifest_sha256)
    _PHOTO_SETS[key] = photos
    return photos


# While render_world builds a scene with photo textures: (PhotoTextures, the seed's photo stream); else None.
_ACTIVE_PHOTOS: contextvars.ContextVar = contextvars.ContextVar("active_photos", default=None)


def _photo(role: str) -> str | None:
    """A photograph's path for a photo-textured look of this role, or None (keep the TEXTURES picture)."""
    active = _ACTIVE_PHOTOS.get()
    if active is None or role not in PHOTO_ROLES:
        return None
    photos, stream = active
    if stream.random() >= PHOTO_SHARE:
        return None
    return photos.paths[int(stream.integers(len(photos.paths)))]


@dataclass
class Light:
    """A point light (inverse-square fall-off) or a directional light such as the sun."""

    position: np.ndarray   # (3,) point light: where it is; directional: the direction its light travels
    power: float           # point: irradiance at 1 m facing it; directional: irradiance facing it
    color: np.ndarray = field(default_factory=lambda: np.ones(3))
    directional: bool = False


# --- Shading


def _local_frame(scene: Scene, sid: int, p_3M, n_3M):
    """Hit points and normals in the surface's own axes: what box-projected textures are laid on."""
    if sid < 6:
        return p_3M, n_3M
    s = scene.solids[sid - 6]
    rel = p_3M - s.center.astype(p_3M.dtype)[:, None]
    lx, ly = _to_box_frame(s, rel[0], rel[1])
    nx, ny = _to_box_frame(s, n_3M[0], n_3M[1])
    return np.stack([lx, ly, rel[2]]), np.stack([nx, ny, n_3M[2]])


# For a face whose normal is along axis a: the texture's (u, v) axes. v runs down -z on walls,
# so photographs stand upright.
_UV_AXES = {0: (1, 2), 1: (0, 2), 2: (0, 1)}


def _albedo(scene, m: Material, sid, p_3M, n_3M, footprint_M):
    """Reflectance (3, M) of material m at points p: a photo texture, a procedural pattern or plain."""
    base = (m.color.astype(np.float32) ** 2.2)[:, None]
    if m.texture is None:
        if m.pattern == "plain" or m.color2 is None:
            return np.broadcast_to(base, p_3M.shape)
        w = _pattern(m, p_3M)
        return base * (1 - w) + (m.color2.astype(np.float32) ** 2.2)[:, None] * w
    q_3M, nl_3M = _local_frame(scene, sid, p_3M, n_3M)
    axis_M = np.argmax(np.abs(nl_3M), axis=0)
    u = np.choose(axis_M, [q_3M[1], q_3M[0], q_3M[0]])
    v = -np.choose(axis_M, [q_3M[2], q_3M[2], q_3M[1]])
    mips = texture_mips(m.texture)
    texels = mips[0].shape[0] / m.tex_scale  # texels per metre
    c, s = math.cos(m.tex_angle), math.sin(m.tex_angle)
    tu, tv = (c * u - s * v) * texels, (s * u + c * v) * texels
    # Mip level: the texels one pixel covers, so distant surfaces are averaged, not aliased.
    level_M = np.clip(np.log2(np.maximum(footprint_M * texels, 1e-6)) + 0.5, 0, len(mips) - 1).astype(np.int64)
    tex_3M = np.empty_like(p_3M)
    for lv in np.unique(level_M):
        sel = np.nonzero(level_M == lv)[0]
        mip = mips[lv]
        mask, scale = mip.shape[0] - 1, 0.5 ** lv
        iu = np.floor(tu[sel] * scale).astype(np.int64) & mask
        iv = np.floor(tv[sel] * scale).astype(np.int64) & mask
        _scatter(tex_3M, sel, mip[iv, iu].T)
    return base * (1.0 + float(m.contrast) * (tex_3M - 1.0))


def _irradiance(scene: Scene, p_3M, n_3M):
    """Light (3, M) arriving at points p with normals n: ambient plus every light, each shadowed."""
    E_3M = np.empty_like(p_3M)
    E_3M[:] = scene.ambient + scene.ambient_up * np.maximum(n_3M[2], 0.0)
    for light in scene.lights:
        if light.directional:
            to_l = np.broadcast_to(-light.position.astype(np.float32)[:, None] * 200.0, p_3M.shape)
            dist2 = np.float32(200.0 ** 2)  # to_l is 200 m long: shadows from anything nearer
            fall = np.float32(light.power)
        else:
            to_l = light.position.astype(np.float32)[:, None] - p_3M
            dist2 = (to_l * to_l).sum(0)
            fall = light.power / np.maximum(dist2, 0.25)  # inverse square, bounded near the bulb
        cos = np.maximum((n_3M * to_l).sum(0), 0.0) / np.sqrt(dist2)
        contrib = fall * cos
        lit = np.nonzero(cos > 0)[0]  # surfaces facing away get no shadow rays
        if len(lit) and scene.solids:
            start = np.take(p_3M, lit, axis=1) + 1e-3 * np.take(n_3M, lit, axis=1)
            t_shadow, _ = cast_rays(scene, start, np.ascontiguousarray(to_l[:, lit]), solids_only=True, cull=True)
            contrib[lit[t_shadow < 1.0]] = 0.0  # something between the point and the light
        E_3M += light.color.astype(np.float32)[:, None] * contrib
    return E_3M


def _sky(scene: Scene, d_3N):
    """Sky radiance (3, N) along directions d: horizon to zenith, brighter towards the sun."""
    elev = np.clip(d_3N[2] / np.sqrt((d_3N * d_3N).sum(0)), 0.0, 1.0)
    horizon, zenith = scene.sky.astype(np.float32)
    sky = horizon[:, None] + (zenith - horizon)[:, None] * np.sqrt(elev)
    for light in scene.lights:
        if light.directional:
            cos = np.maximum(-(light.position.astype(np.float32) @ d_3N) / np.sqrt((d_3N * d_3N).sum(0)), 0)
            sky = sky + 0.6 * cos ** 16  # the bright haze around the sun
    return sky


def shade(scene: Scene, camera: Camera, size, antialias: bool = True) -> dict:
    """Ray-cast the world: linear "radiance" (H, W, 3), planar "depth", camera "normals", "valid".

    As in render(): depth and normals belong to the ray through each pixel's centre (no blends
    across occlusion edges), and with antialias colour is a tent filter of the centre and the
    four shared corner rays.
    """
    h, w = _hw(size)
    o = camera.position.astype(np.float32)
    n_centre = h * w
    d = camera_rays(camera, (h, w))
    if antialias:
        d = np.concatenate([d, camera_rays(camera, (h, w), corners=True)], axis=1)
    t, sid = cast_rays(scene, o, d, solids_only=scene.room is None, cull=True)
    hit = np.nonzero(sid >= 0)[0]
    d_h, t_h, sid_h = d[:, hit], t[hit], sid[hit]
    p = o[:, None] + t_h * d_h
    # One pixel at planar depth t covers t / f metres of a surface facing the camera.
    footprint = t_h * np.float32(2.0 * math.tan(camera.fov / 2.0) / w)

    materials = (list(scene.room_materials) or [None] * 6) + [s.material for s in scene.solids]  # index = sid
    normal, albedo = np.empty_like(p), np.empty_like(p)
    for k in np.unique(sid_h):
        idx = np.nonzero(sid_h == k)[0]
        p_k = np.take(p, idx, axis=1)
        n_k = surface_normal(scene, int(k), p_k)
        n_k /= np.sqrt((n_k * n_k).sum(0))
        n_k *= np.where((n_k * d_h[:, idx]).sum(0) > 0, -1.0, 1.0).astype(np.float32)  # face the camera
        cos_k = np.abs((n_k * d_h[:, idx]).sum(0)) / np.sqrt((d_h[:, idx] ** 2).sum(0))
        # Foreshortening stretches the footprint by 1/cos along one axis: take the geometric mean.
        foot_k = footprint[idx] / np.sqrt(np.maximum(cos_k, 0.05))
        _scatter(normal, idx, n_k)
        _scatter(albedo, idx, _albedo(scene, materials[k], int(k), p_k, n_k, foot_k))
    rad_h = albedo * _irradiance(scene, p, normal)
    if scene.fog_density > 0:  # aerial perspective: distant surfaces fade into the haze
        keep = np.exp(-float(scene.fog_density) * t_h * np.sqrt((d_h * d_h).sum(0)))
        rad_h = rad_h * keep + scene.fog_color.astype(np.float32)[:, None] * (1 - keep)

    rad = _sky(scene, d) if scene.sky is not None else np.zeros_like(d)
    _scatter(rad, hit, rad_h)
    img = rad[:, :n_centre].reshape(3, h, w)
    if antialias:
        k = rad[:, n_centre:].reshape(3, h + 1, w + 1)
        img = 0.5 * img + 0.125 * (k[:, :-1, :-1] + k[:, :-1, 1:] + k[:, 1:, :-1] + k[:, 1:, 1:])

    centre = hit[hit < n_centre]
    valid = np.zeros(n_centre, dtype=bool)
    valid[centre] = True
    depth = np.zeros(n_centre, dtype=np.float32)
    depth[centre] = t[centre]
    n_cam = np.zeros((3, n_centre), dtype=np.float32)
    _scatter(n_cam, centre, camera.rotation().T.astype(np.float32) @ normal[:, :len(centre)])
    return {"radiance": img.transpose(1, 2, 0), "depth": depth.reshape(h, w),
            "normals": n_cam.T.reshape(h, w, 3), "valid": valid.reshape(h, w)}


# --- Materials by role: a colour range and the textures or patterns that suit the role.
# Each entry: (hue, saturation, value ranges of the sRGB colour, tile size range in metres,
# contrast range, looks). A look is a TEXTURES name or a _pattern name.
_ROLES = {
    "wall": ((0, 1), (0.0, 0.3), (0.55, 0.95), (0.6, 3.0), (0.2, 0.6),
             ("plain", "page", "moon", "cell", "brick", "noise", "stripes", "gravel")),
    "floor": ((0.03, 0.12), (0.15, 0.6), (0.3, 0.8), (0.4, 2.0), (0.5, 1.0),
              ("wood", "tiles", "gravel", "grass", "brick", "checkerboard", "moon")),
    "ceiling": ((0, 1), (0.0, 0.1), (0.75, 0.95), (1.0, 3.0), (0.1, 0.3), ("plain", "moon")),
    "wood": ((0.04, 0.11), (0.3, 0.7), (0.3, 0.75), (0.3, 1.0), (0.4, 0.8), ("wood", "wood", "grass", "gravel")),
    "object": ((0, 1), (0.1, 0.9), (0.3, 0.95), (0.1, 0.6), (0.5, 1.0),
               ("plain", "coins", "hubble_deep_field", "retina", "immunohistochemistry", "colorwheel",
                "microaneurysms", "checkerboard", "moon", "gravel", "cell", "page", "checker", "stripes", "noise")),
    "fabric": ((0, 1), (0.2, 0.7), (0.25, 0.8), (0.2, 0.8), (0.3, 0.8), ("grass", "gravel", "cell", "noise")),
    "ground": ((0.08, 0.3), (0.1, 0.5), (0.3, 0.65), (1.0, 5.0), (0.6, 1.0), ("grass", "gravel", "brick", "moon")),
    "facade": ((0.0, 0.15), (0.05, 0.5), (0.4, 0.9), (2.0, 8.0), (0.5, 1.0),
               ("brick", "page", "moon", "gravel", "checkerboard", "plain")),
    "foliage": ((0.2, 0.36), (0.4, 0.8), (0.2, 0.5), (0.3, 1.5), (0.8, 1.0), ("grass", "gravel")),
}


def _material(rng, role: str) -> Material:
    hue, sat, val, tile, contrast, looks = _ROLES[role]
    color = _hsv(rng.uniform(*hue), rng.uniform(*sat), rng.uniform(*val))
    look = str(looks[rng.integers(len(looks))])
    upright = role in ("wall", "facade")  # bricks lie in rows: keep photos upright on walls
    angle = 0.0 if upright else rng.uniform(0, 2 * np.pi)
    if look in TEXTURES:
        return Material(color, texture=_photo(role) or look, tex_scale=rng.uniform(*tile), tex_angle=angle,
                        contrast=rng.uniform(*contrast))
    color2 = color * rng.uniform(0.5, 0.85) if look != "stripes" else _hsv(rng.random(), 0.3, rng.uniform(0.4, 0.9))
    axis = np.array([1.0, 0.0, 0.0]) if rng.random() < 0.5 else np.array([0.0, 1.0, 0.0])
    return Material(color, color2, look, rng.uniform(*tile), rng.uniform(0, 5, 3), axis)


# --- Furniture: each returns a list of Solids built from boxes, cylinders and spheres.


def _box(center, half, material, yaw=0.0) -> Solid:
    return Solid("box", np.asarray(center, dtype=float), np.asarray(half, dtype=float), float(yaw), material)


def _cylinder(x, y, z0, radius, height, material) -> Solid:
    return Solid("cylinder", np.array([x, y, z0 + height / 2]), np.array([radius, radius, height / 2]), 0.0, material)


def _sphere(x, y, z, radius, material) -> Solid:
    return Solid("sphere", np.array([x, y, z]), np.full(3, radius), 0.0, material)


def _turn(yaw, lx, ly):
    """Box frame -> world offsets: rotate (lx, ly) by +yaw."""
    c, s = math.cos(yaw), math.sin(yaw)
    return c * lx - s * ly, s * lx + c * ly


def _table(rng, x, y, yaw, hx, hy, top_z, material) -> list:
    """A top slab on four legs: the legs leave gaps that show the floor (and cast thin shadows)."""
    thick, leg = rng.uniform(0.03, 0.06), rng.uniform(0.025, 0.05)
    parts = [_box((x, y, top_z - thick / 2), (hx, hy, thick / 2), material, yaw)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            dx, dy = _turn(yaw, sx * (hx - 2 * leg), sy * (hy - 2 * leg))
            parts.append(_box((x + dx, y + dy, (top_z - thick) / 2), (leg, leg, (top_z - thick) / 2), material, yaw))
    return parts


def _shelf(rng, x, y, yaw, hx, hy, height, material) -> list:
    """Two sides, a back and 2-5 boards, with blocks of books standing on the boards."""
    board = 0.02
    parts = [_box((x + _turn(yaw, 0, hy - board)[0], y + _turn(yaw, 0, hy - board)[1], height / 2),
                  (hx, board, height / 2), material, yaw)]
    for sx in (-1, 1):
        dx, dy = _turn(yaw, sx * (hx - board), 0)
        parts.append(_box((x + dx, y + dy, height / 2), (board, hy, height / 2), material, yaw))
    n = int(rng.integers(2, 6))
    gap = height / n
    for i in range(n):
        z = 0.08 + i * gap
        parts.append(_box((x, y, z), (hx, hy, board), material, yaw))
        if rng.random() < 0.75:  # a block of books: one box, a colour of its own
            bw, bh = rng.uniform(0.1, hx * 0.9), rng.uniform(0.4, 0.85) * (gap - 2 * board)
            dx, dy = _turn(yaw, rng.uniform(-hx + bw, hx - bw), 0)
            parts.append(_box((x + dx, y + dy, z + board + bh / 2), (bw, hy * 0.8, bh / 2), _material(rng, "object"), yaw))
    return parts


def _lamp(rng, x, y, material) -> tuple:
    """A floor lamp: a base, a thin pole and a shade; its bulb hangs just below the shade."""
    h = rng.uniform(1.3, 1.8)
    shade_r = rng.uniform(0.15, 0.25)
    parts = [_cylinder(x, y, 0, 0.15, 0.03, material), _cylinder(x, y, 0.03, 0.015, h - 0.03, material),
             _cylinder(x, y, h, shade_r, 0.25, _material(rng, "fabric"))]
    return parts, Light(np.array([x, y, h - 0.06]), rng.uniform(0.6, 1.5), np.array([1.0, 0.85, 0.65]))


def _clutter(rng, x, y, hx, hy, z, yaw, n) -> list:
    """n small objects resting on a rectangle (a table top, the floor): books, cups, bottles, balls."""
    parts = []
    for _ in range(n):
        lx, ly = rng.uniform(-hx * 0.85, hx * 0.85), rng.uniform(-hy * 0.85, hy * 0.85)
        dx, dy = _turn(yaw, lx, ly)
        px, py, m = x + dx, y + dy, _material(rng, "object")
        kind = rng.integers(4)
        if kind == 0:  # a book or a box
            half = (rng.uniform(0.04, 0.15), rng.uniform(0.04, 0.12), rng.uniform(0.01, 0.08))
            parts.append(_box((px, py, z + half[2]), half, m, rng.uniform(0, np.pi)))
        elif kind == 1:  # a cup
            parts.append(_cylinder(px, py, z, rng.uniform(0.03, 0.06), rng.uniform(0.07, 0.14), m))
        elif kind == 2:  # a bottle
            r, h = rng.uniform(0.025, 0.045), rng.uniform(0.18, 0.32)
            parts += [_cylinder(px, py, z, r, h, m), _cylinder(px, py, z + h, r * 0.35, 0.06, m)]
        else:  # a ball or a fruit
            r = rng.uniform(0.03, 0.1)
            parts.append(_sphere(px, py, z + r, r, m))
    return parts


class _Floor:
    """Free floor space: discs (x, y, r) already taken, the camera's among them."""

    def __init__(self, lo, hi, camera_xy):
        self.lo, self.hi = np.asarray(lo, float), np.asarray(hi, float)
        self.taken = [(camera_xy[0], camera_xy[1], 0.5)]

    def place(self, rng, radius, lo=None, hi=None, tries=15):
        lo = self.lo + radius if lo is None else np.asarray(lo, float)
        hi = self.hi - radius if hi is None else np.asarray(hi, float)
        for _ in range(tries):
            xy = rng.uniform(lo, np.maximum(hi, lo + 1e-3))
            if all(math.hypot(xy[0] - x, xy[1] - y) > radius + r for x, y, r in self.taken):
                self.taken.append((xy[0], xy[1], radius))
                return xy
        return None


def _against_wall(rng, floor: _Floor, room, hx, hy):
    """A spot with its back (local +y) to a random wall: (x, y, yaw) or None."""
    wall = int(rng.integers(4))  # ROOM_FACES order: x = 0, x = Dx, y = 0, y = Dy
    yaw = (np.pi / 2, -np.pi / 2, np.pi, 0.0)[wall]  # turns local +y towards that wall
    s = rng.uniform(hx, max((room[1] if wall < 2 else room[0]) - hx, hx + 1e-3))
    off = hy + 0.01
    if wall < 2:
        x, y = (off if wall == 0 else room[0] - off), s
    else:
        x, y = s, (off if wall == 2 else room[1] - off)
    if all(math.hypot(x - px, y - py) > math.hypot(hx, hy) * 0.7 + r for px, py, r in floor.taken):
        floor.taken.append((x, y, math.hypot(hx, hy) * 0.7))
        return x, y, yaw
    return None


# --- Scene families. Each draws (Scene, Camera) from rng.


def _aim(rng, position, target, jitter=0.1, roll_sd=0.07, fov=(40, 90)) -> Camera:
    """A camera at position looking roughly at target, slightly rolled like a hand-held photo."""
    v = np.asarray(target, float) - position
    yaw = math.atan2(v[1], v[0]) + rng.normal(0, jitter)
    pitch = math.atan2(v[2], math.hypot(v[0], v[1])) + rng.normal(0, jitter / 2)
    roll = float(np.clip(rng.normal(0, roll_sd), -3 * roll_sd, 3 * roll_sd))
    return Camera(np.asarray(position, float), yaw, pitch, math.radians(rng.uniform(*fov)), roll)


def _indoor(room, solids, lights, rng, floor_role="floor") -> Scene:
    walls = [_material(rng, "wall")] * 4
    if rng.random() < 0.3:  # an accent wall
        walls[rng.integers(4)] = _material(rng, "wall")
    return Scene(room, solids, walls + [_material(rng, floor_role), _material(rng, "ceiling")], lights,
                 ambient=rng.uniform(0.08, 0.25), ambient_up=rng.uniform(0.0, 0.1))


def _ceiling_lights(rng, room, n, x_range=None) -> list:
    xs = rng.uniform(*(x_range or (0.4, room[0] - 0.4)), n)
    return [Light(np.array([x, rng.uniform(0.4, room[1] - 0.4), room[2] - 0.1]), rng.uniform(2.0, 6.0),
                  _hsv(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.3), 1.0)) for x in xs]


def _furnish(rng, room, floor: _Floor, n) -> tuple:
    """n pieces of furniture for a room: (solids, extra lights)."""
    solids, lights = [], []
    for _ in range(n):
        kind = rng.choice(["table", "shelf", "cabinet", "sofa", "lamp", "thing"])
        if kind in ("shelf", "cabinet", "sofa"):
            hx, hy = rng.uniform(0.3, 1.0), rng.uniform(0.15, 0.45)
            spot = _against_wall(rng, floor, room, hx, hy)
            if spot is None:
                continue
            x, y, yaw = spot
            if kind == "shelf":
                solids += _shelf(rng, x, y, yaw, hx, hy, rng.uniform(1.0, min(2.2, room[2] - 0.2)), _material(rng, "wood"))
            elif kind == "cabinet":
                h = rng.uniform(0.5, 1.2)
                solids.append(_box((x, y, h / 2), (hx, hy, h / 2), _material(rng, "wood"), yaw))
                solids += _clutter(rng, x, y, hx, hy, h, yaw, int(rng.integers(0, 3)))
            else:  # a seat and a backrest
                m, seat = _material(rng, "fabric"), rng.uniform(0.35, 0.5)
                solids.append(_box((x, y, seat / 2), (hx, hy, seat / 2), m, yaw))
                bx, by = _turn(yaw, 0, hy * 0.8)
                solids.append(_box((x + bx, y + by, seat + 0.25), (hx, hy * 0.2, 0.25), m, yaw))
            continue
        r = {"table": 0.9, "lamp": 0.3, "thing": 0.4}[kind]
        xy = floor.place(rng, r)
        if xy is None:
            continue
        if kind == "table":
            hx, hy, top, yaw = rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.5), rng.uniform(0.45, 0.8), rng.uniform(0, np.pi)
            solids += _table(rng, xy[0], xy[1], yaw, hx, hy, top, _material(rng, "wood"))
            solids += _clutter(rng, xy[0], xy[1], hx, hy, top, yaw, int(rng.integers(0, 4)))
        elif kind == "lamp":
            parts, light = _lamp(rng, xy[0], xy[1], _material(rng, "object"))
            solids += parts
            lights.append(light)
        else:
            solids += _clutter(rng, xy[0], xy[1], 0.3, 0.3, 0.0, 0.0, 1)  # something standing on the floor
            r = rng.uniform(0.1, 0.35)
            solids.append(rng.choice([_sphere(xy[0], xy[1], r, r, _material(rng, "object")),
                                      _cylinder(xy[0], xy[1], 0, r, rng.uniform(0.3, 1.2), _material(rng, "object"))]))
    return solids, lights


def room_family(rng):
    """A furnished room, seen from standing or sitting height: depth about 0.5-12 m."""
    room = np.array([rng.uniform(3.5, 9), rng.uniform(3.5, 9), rng.uniform(2.4, 3.4)])
    pos = np.array([rng.uniform(0.4, room[0] - 0.4), rng.uniform(0.4, room[1] - 0.4), rng.uniform(0.6, 1.9)])
    target = np.array([rng.uniform(0, room[0]), rng.uniform(0, room[1]), rng.uniform(0.2, 1.5)])
    if np.hypot(*(target - pos)[:2]) < 1.5:  # look across the room, not at a wall from 20 cm
        target[:2] = room[:2] - target[:2]
    camera = _aim(rng, pos, target)
    floor = _Floor([0, 0], room[:2], pos[:2])
    solids, lamps = _furnish(rng, room, floor, int(rng.integers(3, 9)))
    lights = _ceiling_lights(rng, room, int(rng.integers(1, 3)))
    return _indoor(room, solids, (lights + lamps)[:3], rng), camera


def corridor_family(rng):
    """A long narrow corridor seen along its length: strong perspective, depth about 0.5-45 m."""
    room = np.array([rng.uniform(12, 40), rng.uniform(1.6, 3.2), rng.uniform(2.3, 3.4)])
    pos = np.array([rng.uniform(0.3, 3.0), room[1] / 2 + rng.uniform(-0.3, 0.3) * room[1], rng.uniform(1.1, 1.9)])
    camera = _aim(rng, pos, (room[0], room[1] / 2, pos[2] + rng.uniform(-1.0, 0.3)), jitter=0.12)
    solids, door, fixture = [], _material(rng, "wood"), _material(rng, "ceiling")
    x = pos[0] + rng.uniform(0.5, 3)
    while x < room[0] - 1 and len(solids) < 24:  # doors, pillars and benches along both walls
        side = rng.integers(2)
        y_wall = 0.0 if side == 0 else room[1]
        kind = rng.integers(3)
        if kind == 0:  # a door: a thin slab standing proud of the wall
            y = y_wall + (0.02 if side == 0 else -0.02)
            solids.append(_box((x, y, 1.05), (0.45, 0.03, 1.05), door))
        elif kind == 1:  # a pillar
            d = rng.uniform(0.1, 0.3)
            solids.append(_box((x, y_wall + (d if side == 0 else -d), room[2] / 2), (0.2, d, room[2] / 2), _material(rng, "wall")))
        else:  # a bench or a cabinet
            d, h = rng.uniform(0.2, 0.35), rng.uniform(0.4, 1.0)
            solids.append(_box((x, y_wall + (d if side == 0 else -d), h / 2), (rng.uniform(0.4, 1.0), d, h / 2), _material(rng, "object")))
        if rng.random() < 0.3:  # a ceiling fixture
            solids.append(_box((x, room[1] / 2, room[2] - 0.03), (0.6, 0.15, 0.03), fixture))
        x += rng.uniform(1.5, 5.0)
    n = int(rng.integers(1, 4))
    lights = [Light(np.array([x, room[1] / 2, room[2] - 0.15]), rng.uniform(2.0, 5.0), np.array([1.0, 0.95, 0.85]))
              for x in pos[0] + np.sort(rng.uniform(1, min(room[0] - pos[0], 20), n))]
    return _indoor(room, solids, lights, rng), camera


def tabletop_family(rng):
    """A close look down at a table with objects on it: objects 0.3-2 m away, the floor beyond."""
    room = np.array([rng.uniform(4, 7), rng.uniform(4, 7), rng.uniform(2.5, 3.2)])
    tx, ty = room[0] / 2 + rng.uniform(-0.5, 0.5), room[1] / 2 + rng.uniform(-0.5, 0.5)
    hx, hy, top, yaw = rng.uniform(0.5, 1.1), rng.uniform(0.35, 0.7), rng.uniform(0.7, 0.8), rng.uniform(0, 2 * np.pi)
    side = rng.choice([-1, 1])
    ex, ey = _turn(yaw, side * (hx + rng.uniform(0.0, 0.3)), rng.uniform(-0.6, 0.6) * hy)
    pos = np.array([tx + ex, ty + ey, top + rng.uniform(0.2, 0.8)])
    gx, gy = _turn(yaw, rng.uniform(-0.5, 0.5) * hx, rng.uniform(-0.5, 0.5) * hy)
    camera = _aim(rng, pos, (tx + gx, ty + gy, top), jitter=0.08, fov=(40, 75))
    solids = _table(rng, tx, ty, yaw, hx, hy, top, _material(rng, "wood"))
    solids += _clutter(rng, tx, ty, hx, hy, top, yaw, int(rng.integers(4, 12)))
    floor = _Floor([0, 0], room[:2], (tx, ty))
    floor.taken.append((tx, ty, math.hypot(hx, hy) + 0.3))
    more, lamps = _furnish(rng, room, floor, int(rng.integers(0, 4)))
    lights = [Light(np.array([tx + rng.uniform(-1, 1), ty + rng.uniform(-1, 1), room[2] - 0.1]), rng.uniform(2.0, 5.0))]
    if rng.random() < 0.5:  # a desk lamp's light, low and to the side: long shadows on the table
        lights.append(Light(np.array([tx + rng.uniform(-1, 1), ty + rng.uniform(-1, 1), top + rng.uniform(0.4, 0.9)]),
                            rng.uniform(0.3, 1.0), np.array([1.0, 0.85, 0.65])))
    return _indoor(room, solids + more, (lights + lamps)[:3], rng), camera


def outdoor_family(rng):
    """A street: ground, buildings, trees and poles under a sky. Depth about 1-300 m; the sky is invalid."""
    h = rng.uniform(1.2, 2.0) if rng.random() < 0.7 else rng.uniform(2.0, 12.0)
    pos = np.array([0.0, 0.0, h])
    street = rng.uniform(0, 2 * np.pi)
    along, across = np.array([math.cos(street), math.sin(street)]), np.array([-math.sin(street), math.cos(street)])
    half_width = rng.uniform(5, 15)
    solids = [_box((0, 0, -0.5), (300, 300, 0.5), _material(rng, "ground"))]
    for side in (-1, 1):  # two rows of buildings facing the street
        s = rng.uniform(-15, 0)
        while s < 160 and len(solids) < 16:
            w, d, bh = rng.uniform(6, 25), rng.uniform(8, 20), rng.uniform(4, 40)
            if rng.random() < 0.85:
                c = (s + w / 2) * along + side * (half_width + d / 2 + rng.uniform(0, 4)) * across
                solids.append(_box((c[0], c[1], bh / 2), (w / 2, d / 2, bh / 2), _material(rng, "facade"), street))
            s += w + rng.uniform(0, 8)
    for _ in range(int(rng.integers(2, 10))):  # trees, poles and cars along the pavements
        c = rng.uniform(3, 60) * along + rng.choice([-1, 1]) * rng.uniform(2, half_width) * across
        kind = rng.integers(3)
        if kind == 0:
            th, cr = rng.uniform(1.5, 4), rng.uniform(1, 3)
            solids += [_cylinder(c[0], c[1], 0, rng.uniform(0.1, 0.25), th, _material(rng, "wood")),
                       _sphere(c[0], c[1], th + cr * 0.8, cr, _material(rng, "foliage"))]
        elif kind == 1:
            solids.append(_cylinder(c[0], c[1], 0, rng.uniform(0.05, 0.12), rng.uniform(3, 8), _material(rng, "object")))
        else:
            m = _material(rng, "object")
            solids += [_box((c[0], c[1], 0.45), (2.1, 0.9, 0.35), m, street), _box((c[0], c[1], 1.05), (1.1, 0.8, 0.3), m, street)]
    sun_az, sun_el = rng.uniform(0, 2 * np.pi), rng.uniform(math.radians(15), math.radians(65))
    sun_dir = -np.array([math.cos(sun_el) * math.cos(sun_az), math.cos(sun_el) * math.sin(sun_az), math.sin(sun_el)])
    overcast = rng.random() < 0.3
    sun = Light(sun_dir, rng.uniform(0.3, 0.8) if overcast else rng.uniform(2.0, 3.5), np.array([1.0, 0.93, 0.8]), True)
    haze = rng.uniform(0.6, 1.0)
    sky = np.array([[haze * 1.2, haze * 1.25, haze * 1.3], [0.35, 0.55, 1.0]]) * rng.uniform(1.0, 1.6)
    if overcast:
        sky[1] = sky[0] * 0.9
    target = pos + np.array([*(rng.uniform(20, 60) * np.array(_turn(rng.uniform(-0.6, 0.6), *along))), rng.uniform(-h, 8)])
    camera = _aim(rng, pos, target, jitter=0.05, fov=(45, 90))
    scene = Scene(None, solids, [], [sun], ambient=rng.uniform(0.25, 0.5) * (2.0 if overcast else 1.0),
                  fog_density=rng.uniform(0.0005, 0.005), fog_color=sky[0].copy(), sky=sky, ambient_up=rng.uniform(0.1, 0.3))
    return scene, camera


def box_room_family(rng):
    """The old box rooms of render_scene, lit and shaded the world's way, with roll and a random fov."""
    scene, camera = random_scene(rng)
    scene.lights = [Light(lp, 3.0 * power) for lp, power in scene.lights]
    camera.roll = float(np.clip(rng.normal(0, 0.07), -0.2, 0.2))
    camera.fov = math.radians(rng.uniform(40, 90))
    return scene, camera


def _figure(rng, x, y, facing, height) -> list:
    """A standing person built from the three primitives: legs, torso, arms, neck, head and hair."""
    clothes, legs, skin = _material(rng, "fabric"), _material(rng, "fabric"), Material(
        _hsv(rng.uniform(0.02, 0.09), rng.uniform(0.25, 0.6), rng.uniform(0.3, 0.95)))
    hip, shoulder, r = 0.47 * height, 0.81 * height, 0.065 * height
    wide = rng.uniform(0.16, 0.24)
    parts = [_box((x, y, hip / 2), (wide * 0.8, 0.1, hip / 2), legs, facing),
             _box((x, y, (hip + shoulder) / 2), (wide, rng.uniform(0.09, 0.14), (shoulder - hip) / 2), clothes, facing),
             _cylinder(x, y, shoulder, 0.05, 0.06 * height, skin),
             _sphere(x, y, height - r, r, skin)]
    for side in (-1, 1):  # arms hang beside the torso
        ax, ay = _turn(facing, side * (wide + 0.05), 0)
        parts.append(_cylinder(x + ax, y + ay, hip - 0.05 * height, 0.045, shoulder - hip + 0.03 * height, clothes))
    if rng.random() < 0.8:  # hair: a slightly larger sphere, set back from the face
        bx, by = _turn(facing, 0, -0.02)
        parts.append(_sphere(x + bx, y + by, height - r + 0.015, r * 1.05,
                             Material(_hsv(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.7), rng.uniform(0.05, 0.6)))))
    return parts


def _thing(rng, x, y, z, size) -> list:
    """An object held up in front of the camera: a flower or a ball on a stem, or a box, pot or ball on a stand."""
    m = _material(rng, rng.choice(["object", "foliage", "fabric"]))
    kind = rng.integers(3)
    if kind == 0:  # a round head on a thin stem down to the floor
        return [_sphere(x, y, z, size, m), _cylinder(x, y, 0, size * rng.uniform(0.05, 0.15), z, _material(rng, "foliage"))]
    stand = _cylinder(x, y, 0, size * rng.uniform(0.3, 0.9), max(z - 0.6 * size, 0.01), _material(rng, "wood"))
    if kind == 1:
        return [_box((x, y, z), (size, size * rng.uniform(0.5, 1.0), size * rng.uniform(0.6, 1.0)), m,
                     rng.uniform(0, np.pi)), stand]
    return [_cylinder(x, y, z - size, size * rng.uniform(0.6, 1.0), 2 * size, m) if rng.random() < 0.5
            else _sphere(x, y, z, size, m), stand]


def subject_family(rng):
    """A photograph's composition: a person or an object 0.35-3 m away in front of a room or a street.

    Not drawn by the world (FAMILIES); training opts in with a share of such scenes (train.py --subjects),
    because photographers centre what is near, which the world's cameras, aimed across rooms and down
    streets, never do: they teach "the centre is far"."""
    scene, camera = (room_family if rng.random() < 0.6 else outdoor_family)(rng)
    pos = camera.position.copy()
    figure = rng.random() < 0.5
    if figure or pos[2] > 2.5:
        pos[2] = rng.uniform(1.1, 1.8)
    ahead = np.array([math.cos(camera.yaw), math.sin(camera.yaw), 0.0])
    t, _ = cast_rays(scene, pos, ahead[:, None], solids_only=scene.room is None)
    back = float(min(t[0], 8.0))  # the background straight ahead (outdoors: at most 8 m; sky: 8 m)
    d = max(min(back * rng.uniform(0.25, 0.7), 3.0 if figure else 2.0), 0.35)
    x, y = pos[:2] + d * ahead[:2]
    kept = [s for s in scene.solids if np.hypot(*(s.center[:2] - pos[:2])) > d + 0.4 or s.center[2] < -0.1]
    if figure and d > 0.7:
        height = rng.uniform(1.5, 1.9)
        target = (x, y, height * rng.uniform(0.6, 0.92))
        scene.solids = kept + _figure(rng, x, y, camera.yaw + np.pi / 2 + rng.normal(0, 0.3), height)
        fov = (25, 60)
    else:
        fov = (30, 65)
        z = float(np.clip(pos[2] + rng.normal(0, 0.15), 0.2, 2.0))
        # 20-50% of the half-width of a view from this range at distance d (the camera's own fov is drawn by _aim)
        size = d * math.tan(math.radians(rng.uniform(*fov)) / 2) * rng.uniform(0.2, 0.5)
        target = (x, y, z)
        scene.solids = kept + _thing(rng, x, y, z, size)
    return scene, _aim(rng, pos, target, jitter=0.1, fov=fov)


_BUILDERS = {"room": room_family, "corridor": corridor_family, "tabletop": tabletop_family,
             "outdoor": outdoor_family, "box_room": box_room_family, "subject": subject_family}
_FAMILY_P = (0.3, 0.15, 0.2, 0.25, 0.1)


# --- From radiance to a photograph


def expose(radiance_HW3):
    """Auto-exposure and the sRGB curve: what a camera does before anything else."""
    lum = radiance_HW3.mean(2)
    key = float(np.partition(lum.ravel(), int(lum.size * 0.97))[int(lum.size * 0.97)])
    img = np.clip(radiance_HW3 * (0.9 / max(key, 1e-4)), 0.0, 1.0)
    return (img ** (1 / 2.2)).astype(np.float32)


def augment_photo(img_HW3, rng):
    """Photometric augmentation: exposure, white balance, gamma, blur, sensor noise, JPEG."""
    lin = img_HW3.astype(np.float32) ** 2.2
    gains = np.exp(rng.normal(0, 0.08, 3)) * 2 ** rng.uniform(-0.8, 0.5)  # white balance and exposure
    img = np.clip(lin * gains.astype(np.float32), 0, 1) ** np.float32(1 / rng.uniform(1.8, 2.6))
    if rng.random() < 0.4:  # defocus or motion: a little blur
        img = gaussian_filter(img, (rng.uniform(0.3, 1.2),) * 2 + (0,))
    sigma = rng.uniform(0.002, 0.03)  # shot noise grows with the signal, read noise does not
    img = img + rng.standard_normal(img.shape).astype(np.float32) * np.float32(sigma) * np.sqrt(img + 0.05)
    img = np.clip(img, 0, 1)
    if rng.random() < 0.6:
        img = _jpeg(img, int(rng.integers(25, 96)))
    return img.astype(np.float32)


def _jpeg(img_HW3, quality: int):
    buf = io.BytesIO()
    Image.fromarray((img_HW3 * 255 + 0.5).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf), dtype=np.float32) / 255.0


def family_weights(spec: str | None) -> tuple | None:
    """"room=0.4,tabletop=0.3" -> the world's family probabilities in FAMILIES order (unnamed families 0),
    normalized; None or "" -> None (the world's own mix, _FAMILY_P). One clear error for a bad spec."""
    if not spec:
        return None
    w = dict.fromkeys(FAMILIES, 0.0)
    for part in spec.split(","):
        name, _, value = part.partition("=")
        try:
            if name.strip() not in w or float(value) < 0:
                raise ValueError
            w[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"families {spec!r}: expected name=weight,... with names from {', '.join(FAMILIES)} "
                             "and weights >= 0") from None
    total = sum(w.values())
    if total <= 0:
        raise ValueError(f"families {spec!r}: the weights sum to 0")
    return tuple(v / total for v in w.values())


def render_world(seed: int, size=128, family: str | None = None, augment: bool = True, mix: tuple | None = None,
                 photos=None) -> dict:
    """One scene of the world: {"image", "depth", "normals", "valid", "family"}.

    image (H, W, 3) float32 in [0, 1]; depth (H, W) float32 planar metres, 0 where invalid;
    normals (H, W, 3) float32 unit, camera frame, facing the camera, 0 where invalid; valid
    (H, W) bool, False where the ray escapes to the sky. size: n or (H, W). The family is drawn
    from the seed unless given, with probabilities mix (family_weights; default the world's own _FAMILY_P: the
    draw consumes the same random numbers either way, so a seed's geometry depends only on its family);
    augmentation has its own stream, so it never moves the geometry. photos: a folder of photographs or its
    PhotoTextures (photo_textures): a share of the photo-textured surfaces carry its photographs (see PHOTO_ROLES).
    """
    rng = np.random.default_rng(seed)
    drawn = FAMILIES[int(rng.choice(len(FAMILIES), p=_FAMILY_P if mix is None else mix))]
    family = family or drawn
    active = None if photos is None else (photo_textures(photos), np.random.default_rng([seed, 3]))
    token = _ACTIVE_PHOTOS.set(active)
    try:
        scene, camera = _BUILDERS[family](rng)
    finally:
        _ACTIVE_PHOTOS.reset(token)
    out = shade(scene, camera, size)
    image = expose(out.pop("radiance"))
    if augment:
        image = augment_photo(image, np.random.default_rng([seed, 1]))
    return {"image": image, **out, "family": family}
