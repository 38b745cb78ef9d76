"""The synthetic world: procedural scenes rendered by vectorized ray casting, with exact depth.

Deterministic by seed: `render_scene(seed, size)` gives the same image and planar depth on any
machine with the same numpy. data.SyntheticScenes wraps it as a dataset with disjoint seed
ranges per split. This module imports numpy only: it is the bottom of the data flow.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np
#
# A box-shaped room with a few solids, seen by a pinhole camera from inside, rendered by casting
# every pixel's ray at once with numpy and intersecting each primitive analytically. The image
# carries the cues a monocular depth model can learn from: Lambertian shading and light
# fall-off, shadows, texture gradients on the floor and walls, perspective of the room's edges,
# occlusion boundaries, and a little distance fog. The depth is exact planar depth.
#
# World frame: metres, z up, the room spans [0, Dx] x [0, Dy] x [0, Dz].
# Camera frame: x right, y down, z forward (the optical axis). Rays are scaled so that their
# camera-z component is 1, which makes the ray parameter t at a hit equal the planar depth.
#
# Speed at 64 x 64 with anti-aliasing, one thread: 400-450 scenes/s of CPU time (270-300/s wall clock on
# a 2-core machine that other jobs were loading), measured with
#   OMP_NUM_THREADS=1 python -c "import scenes,time; t=time.process_time(); [scenes.render_scene(s) for s in range(1000)]; print(1000/(time.process_time()-t))"

ROOM_FACES = ("wall_x0", "wall_x1", "wall_y0", "wall_y1", "floor", "ceiling")  # surface ids 0..5
_EPS = 1e-4  # minimum hit distance, so a ray does not hit the surface it starts on


@dataclass
class Camera:
    """A pinhole camera with square pixels and square images (horizontal fov = vertical fov)."""

    position: np.ndarray  # (3,) metres
    yaw: float            # radians; 0 looks along +x, positive turns towards +y
    pitch: float          # radians; positive looks up
    fov: float            # radians, full field of view across the image

    def rotation(self) -> np.ndarray:
        """(3, 3) world-from-camera rotation: its columns are camera x (right), y (down), z (forward)."""
        cy, sy, cp, sp = math.cos(self.yaw), math.sin(self.yaw), math.cos(self.pitch), math.sin(self.pitch)
        forward = np.array([cp * cy, cp * sy, sp])
        right = np.array([sy, -cy, 0.0])
        down = np.cross(forward, right)
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
    lights: list = field(default_factory=list)          # [(position (3,), intensity)], lights[0] casts shadows
    ambient: float = 0.25
    fog_density: float = 0.0               # per metre of Euclidean distance
    fog_color: np.ndarray = field(default_factory=lambda: np.full(3, 0.7))


def camera_rays(camera: Camera, n: int, corners: bool = False) -> np.ndarray:
    """World-space ray directions (3, n*n) through the pixel centres of an n x n image, row-major.

    With corners=True: the (n+1) x (n+1) rays through the pixel corners instead (anti-aliasing).
    Each direction has camera-z component 1 (it is R @ (x, y, 1)), so the hit parameter t is the
    planar depth and t * |dir| is the Euclidean distance. Rays are stored component-major
    (one contiguous row per axis), which is what makes the numpy ray caster fast.
    """
    f = n / (2.0 * math.tan(camera.fov / 2.0))  # focal length in pixels
    c = np.arange(n + 1 if corners else n, dtype=np.float64) + (0.0 if corners else 0.5)
    c = (c - n / 2.0) / f  # offsets from the principal point, in units of the focal length
    x_N, y_N = np.tile(c, len(c)), np.repeat(c, len(c))  # x varies along a row, y down the rows
    R = camera.rotation()
    d_3N = R[:, 0:1] * x_N + R[:, 1:2] * y_N + R[:, 2:3]
    return d_3N.astype(np.float32)


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


def cast_rays(scene: Scene, o, d, solids_only: bool = False):
    """Nearest hit of each ray: t (N,) in units of |d| and the surface id (N,) of what was hit.

    o: (3,) or (3, N) origins; d: (3, N) directions. Surface ids: 0..5 the ROOM_FACES, 6 + k
    solid k, -1 nothing (only possible with solids_only, e.g. for shadow rays).
    """
    o = np.asarray(o, dtype=d.dtype)
    if solids_only:
        t_N, sid_N = np.full(d.shape[1], np.inf, dtype=d.dtype), np.full(d.shape[1], -1, dtype=np.int64)
    else:
        t_N, sid_N = _hit_room(scene.room, o, d)
    dd = None
    for k, s in enumerate(scene.solids):
        if s.kind == "sphere":
            dd = (d * d).sum(0) if dd is None else dd
            ts = _hit_sphere(s, o, d, dd)
        else:
            ts = (_hit_box if s.kind == "box" else _hit_cylinder)(s, o, d)
        closer = ts < t_N
        t_N = np.where(closer, ts, t_N)
        sid_N = np.where(closer, 6 + k, sid_N)
    return t_N, sid_N


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
