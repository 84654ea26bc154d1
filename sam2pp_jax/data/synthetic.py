"""Deterministic synthetic videos with mask, box and point ground truth of the same objects.

Why: the tiny-model demo needs free, seed-reproducible training and held-out clips that still hold
what makes tracking hard (occlusion, look-alike distractors, deformation, scale change, leaving the
frame).

Scene model (numpy + OpenCV only; ~30 ms of one CPU core for 24 x 128 x 128 with 3 objects)
-------------------------------------------------------------------------------------------
* Background: smooth value noise, a gradient, stripes and/or blurred random blobs (1-2 of them
  mixed), coloured through a random 3-colour ramp, with a static grain and an optional smooth camera
  pan.
* Objects 1..K (their ids in `masks`): a star-shaped outline (ellipse, polygon, star or blob) given
  by a radial profile r(phi); over time it is warped non-rigidly (radius times
  1 + sum_j a_j sin(k_j phi + w_j t + psi_j)), stretched, rotated, scaled (smooth log-scale drift)
  and moved (random walk with velocity that bounces off the frame borders).  Its texture (solid,
  stripes, checker, spots, gradient) lives in the object's own undeformed coordinates, so texture
  and keypoints move with the object.
  Objects 2..K have a DISTINCT look, a SIMILAR one (object 1's pattern with shifted colours) or the
  SAME one as object 1 (a distractor; `distractor` says which).
* Events (probabilities in `Difficulty`): another object's path crosses object 1; a foreground bar
  (drawn on top of everything, id 0 in `masks`) sweeps over object 1, wide enough to hide it
  completely for 1-4 frames or narrow (partial occlusion); an object leaves the frame completely and
  comes back.  A per-object depth decides which object is seen where objects overlap.
* Frame 0 is the prompt frame: object 1 covers 5-25 % of the image with at least 80 % of it visible,
  every object is visible there and all of its keypoints are visible there (the scene is re-drawn
  from the same generator until this holds).

Conventions: pixel centres at integer coordinates (OpenCV); a point (x, y) lies on pixel
(floor(y + 0.5), floor(x + 0.5)); boxes are [x0, y0, w, h] of the visible pixels with
w = x1 - x0 + 1 (the extent of the pixels, not of their centres).

Public API
----------
``generate_video(seed, *, num_frames=24, height=128, width=128, num_objects=(1, 3),
difficulty="normal", num_points=8, min_visible_pixels=16) -> dict`` with keys
``frames`` uint8 [T,H,W,3] RGB; ``masks`` uint8 [T,H,W] visible-object ids (0 = background or the
foreground occluder); ``amodal_masks`` bool [T,K,H,W] (whole object, occluded parts included);
``occluder_mask`` bool [T,H,W]; ``boxes_xywh`` float32 [T,K,4] (NaN row when no pixel is visible);
``visible`` bool [T,K] (at least ``min_visible_pixels`` visible pixels); ``points_xy`` float32
[T,K,P,2] (physically tracked, also when out of frame); ``point_visible`` bool [T,K,P] (in the frame
and on the object's visible mask); ``depth`` int32 [K] (larger = nearer); ``distractor`` int8 [K]
(NOT_SIMILAR / SIMILAR / SAME appearance as object 1; 0 for object 1 itself).
``generate_dataset(seed, num_videos, **kw)`` yields ``(name, video)``; ``video_seed(seed, index)``
is the seed of its video ``index`` (SeedSequence spawn key, for random access, e.g. a grain source).
``Difficulty`` and ``DIFFICULTIES`` ("easy", "normal", "hard") hold the knobs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, Optional, Tuple, Union

import cv2
import numpy as np

from sam2pp_jax.tracking.prompts import mask_to_box

MAX_OBJECTS = 8
NOT_SIMILAR, SIMILAR, SAME = 0, 1, 2

_N_VERT = 96  # outline vertices
_PHI = np.linspace(0.0, 2 * np.pi, _N_VERT, endpoint=False)
_DIRS = np.stack([np.cos(_PHI), np.sin(_PHI)], -1)
_TEX = 96  # texture side in texels
_TEX_HALF = 1.25  # undeformed object units covered by half a texture side
_POINT_DEPTH = 0.7  # keypoints lie within this fraction of the outline radius
_MAX_ATTEMPTS = 200
_SHIFT = 4  # fillPoly sub-pixel bits


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """Knobs of a difficulty level.

  Speeds, lengths and noise are for a 128-px frame (scaled by min(H, W)/128).
  """

  p_occluder: float = 0.35  # a foreground bar sweeps over object 1
  p_full_occlusion: float = 0.6  # given a bar: it hides object 1 completely for some frames
  full_occlusion_frames: Tuple[int, int] = (1, 4)  # how many (min, max) a full bar hides it
  p_cross: float = 0.35  # per other object: its straight path crosses object 1
  p_same: float = 0.3  # per other object: same colours and texture as object 1
  p_similar: float = 0.35  # per other object: object 1's pattern with shifted colours
  p_exit: float = 0.15  # per object: leaves the frame completely, then comes back
  speed: Tuple[float, float] = (1.0, 4.0)  # random-walk speed range, px/frame
  accel: float = 0.5  # std of the per-frame velocity change, px/frame^2
  scale_amp: float = 0.25  # amplitude of the log-scale change
  deform_amp: float = 0.12  # amplitude of the radial warp and of the stretch
  rotation: float = 4.0  # max rotation speed, degrees/frame
  pan: float = 1.0  # background pan speed, px/frame
  illumination: float = 0.08  # relative amplitude of global and per-object brightness change
  noise: float = 3.0  # std of the (uniform) sensor noise, grey levels


DIFFICULTIES = {
  # curriculum start: objects keep their place, shape and look (only sensor noise changes)
  "static": Difficulty(
    p_occluder=0.0,
    p_cross=0.0,
    p_same=0.0,
    p_similar=0.0,
    p_exit=0.0,
    speed=(0.0, 0.0),
    accel=0.0,
    scale_amp=0.0,
    deform_amp=0.0,
    rotation=0.0,
    pan=0.0,
    illumination=0.0,
    noise=2.0,
  ),
  "easy": Difficulty(
    p_occluder=0.15,
    p_full_occlusion=0.5,
    p_cross=0.2,
    p_same=0.15,
    p_similar=0.3,
    p_exit=0.05,
    speed=(0.5, 2.5),
    accel=0.3,
    scale_amp=0.15,
    deform_amp=0.06,
    rotation=2.0,
    pan=0.0,
    illumination=0.04,
    noise=2.0,
  ),
  "normal": Difficulty(),
  "hard": Difficulty(
    p_occluder=0.6,
    p_full_occlusion=0.7,
    p_cross=0.5,
    p_same=0.5,
    p_similar=0.3,
    p_exit=0.3,
    speed=(2.0, 6.0),
    accel=0.8,
    scale_amp=0.35,
    deform_amp=0.2,
    rotation=6.0,
    pan=2.0,
    illumination=0.12,
    noise=5.0,
  ),
}


# Held-out evaluation suites (the demo scores "normal"; memory policies are compared on "hard"):
# difficulty, frames per video and frame size. "hard" has long full occlusions with
# re-appearance, look-alike distractors crossing the target, fast motion, scale change and
# 64-frame videos.
SUITES = {
  "normal": dict(difficulty="normal", num_frames=24, size=96),
  "hard": dict(
    difficulty=dataclasses.replace(
      DIFFICULTIES["hard"],
      p_occluder=0.7,
      p_full_occlusion=0.8,
      full_occlusion_frames=(4, 12),
      p_cross=0.6,
      p_same=0.5,
      p_exit=0.3,
      scale_amp=0.45,
    ),
    num_frames=64,
    size=96,
  ),
}


# --------------------------------------------------------------------------------------------------
# argument checks


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  return int(value)


def _object_range(num_objects) -> Tuple[int, int]:
  if isinstance(num_objects, (tuple, list)):
    if len(num_objects) != 2:
      raise ValueError(f"num_objects must be an int or a (min, max) pair, got {num_objects!r}")
    lo, hi = (_check_int("num_objects", v, 1) for v in num_objects)
  else:
    lo = hi = _check_int("num_objects", num_objects, 1)
  if lo > hi or hi > MAX_OBJECTS:
    raise ValueError(
      f"num_objects must satisfy 1 <= min <= max <= {MAX_OBJECTS}, got {num_objects!r}"
    )
  return lo, hi


def _difficulty(difficulty: Union[str, Difficulty]) -> Difficulty:
  if isinstance(difficulty, str):
    if difficulty not in DIFFICULTIES:
      raise ValueError(
        f"difficulty must be one of {sorted(DIFFICULTIES)} or a Difficulty, got {difficulty!r}"
      )
    return DIFFICULTIES[difficulty]
  if not isinstance(difficulty, Difficulty):
    raise ValueError(
      f"difficulty must be a preset name or a Difficulty, got {type(difficulty).__name__}"
    )
  for f in dataclasses.fields(Difficulty):
    v = getattr(difficulty, f.name)
    if f.name.startswith("p_") and not 0.0 <= v <= 1.0:
      raise ValueError(f"Difficulty.{f.name} is a probability in [0, 1], got {v}")
  lo, hi = difficulty.full_occlusion_frames
  if not 1 <= lo <= hi:
    raise ValueError(
      "Difficulty.full_occlusion_frames must be (min, max) with 1 <= min <= max, got "
      f"{difficulty.full_occlusion_frames}"
    )
  lo, hi = difficulty.speed
  if not 0.0 <= lo <= hi:
    raise ValueError(
      f"Difficulty.speed must be (min, max) with 0 <= min <= max, got {difficulty.speed}"
    )
  for name in ("accel", "scale_amp", "deform_amp", "rotation", "pan", "illumination", "noise"):
    if getattr(difficulty, name) < 0:
      raise ValueError(f"Difficulty.{name} must be >= 0, got {getattr(difficulty, name)}")
  if difficulty.deform_amp > 0.4 or difficulty.illumination > 0.5:
    raise ValueError("Difficulty.deform_amp must be <= 0.4 and Difficulty.illumination <= 0.5")
  return difficulty


# --------------------------------------------------------------------------------------------------
# background


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
  small = rng.random((cells, cells)).astype(np.float32)
  return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _bg_field(rng: np.random.Generator, kind: int, h: int, w: int) -> np.ndarray:
  """One scalar background layer: 0 noise, 1 gradient, 2 stripes, 3 blobs."""
  if kind == 0:
    return _smooth_noise(rng, h, w, int(rng.integers(2, 9)))
  yy, xx = np.mgrid[:h, :w].astype(np.float32) / max(h, w)
  a = rng.uniform(0, 2 * np.pi)
  proj = xx * np.cos(a) + yy * np.sin(a)
  if kind == 1:
    return proj
  if kind == 2:
    s = np.sin(2 * np.pi * rng.uniform(2, 10) * proj + rng.uniform(0, 2 * np.pi))
    return np.sign(s) * np.abs(s) ** rng.uniform(0.3, 1.0)
  img = np.zeros((h, w), np.float32)
  for _ in range(int(rng.integers(5, 25))):
    c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    r = int(rng.uniform(0.03, 0.2) * max(h, w))
    cv2.circle(img, c, max(r, 1), float(rng.uniform(-1, 1)), -1)
  return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 3.0))


def _background(
  rng: np.random.Generator, h: int, w: int, t: int, pan: float
) -> Tuple[np.ndarray, np.ndarray]:
  """A float32 canvas and the [T,2] offsets of the (panning) view into it."""
  pad = int(min(math.ceil(pan * t * 0.5), max(h, w) // 2))
  ch, cw = h + 2 * pad, w + 2 * pad
  field = np.zeros((ch, cw), np.float32)
  for kind in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
    f = _bg_field(rng, int(kind), ch, cw)
    field += rng.uniform(0.5, 1.0) * (f - f.min()) / max(float(f.max() - f.min()), 1e-6)
  field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
  ramp = rng.uniform(0, 255, (3, 3))
  canvas = np.stack([np.interp(field, [0.0, 0.5, 1.0], ramp[:, c]) for c in range(3)], -1)
  canvas = (canvas + rng.normal(0, 4, (ch, cw, 1))).astype(np.float32)
  offsets = np.zeros((t, 2))
  if pad > 0:
    v = rng.normal(0, 1, 2)
    v *= pan / max(float(np.linalg.norm(v)), 1e-6)
    for i in range(1, t):
      v = 0.9 * v + rng.normal(0, 0.3 * pan, 2)
      offsets[i] = offsets[i - 1] + v
      for d in range(2):
        if abs(offsets[i, d]) > pad:
          offsets[i, d] = np.clip(offsets[i, d], -pad, pad)
          v[d] = -v[d]
  return canvas, offsets + pad


# --------------------------------------------------------------------------------------------------
# appearance

_TEXTURE_KINDS = ("solid", "stripes", "checker", "spots", "gradient")


@dataclasses.dataclass(frozen=True)
class _Look:
  kind: str
  colors: np.ndarray  # [2,3] float
  pattern_seed: int


def _color_far_from(rng: np.random.Generator, ref: np.ndarray, dist: float) -> np.ndarray:
  best, best_d = None, -1.0
  for _ in range(20):
    c = rng.uniform(0, 255, 3)
    d = min(float(np.linalg.norm(c - r)) for r in ref)
    if d >= dist:
      return c
    if d > best_d:
      best, best_d = c, d
  return best


def _new_look(rng: np.random.Generator, avoid: np.ndarray) -> _Look:
  c0 = _color_far_from(rng, avoid, 90.0)
  c1 = _color_far_from(rng, c0[None], 70.0)
  return _Look(
    _TEXTURE_KINDS[int(rng.integers(len(_TEXTURE_KINDS)))],
    np.stack([c0, c1]),
    int(rng.integers(2**31)),
  )


def _similar_look(rng: np.random.Generator, look: _Look) -> _Look:
  d = rng.normal(0, 1, (2, 3))
  d *= rng.uniform(30, 50) / np.linalg.norm(d, axis=1, keepdims=True)
  return _Look(look.kind, np.clip(look.colors + d, 0, 255), look.pattern_seed)


def _texture(look: _Look) -> np.ndarray:
  """uint8 [S,S,3] texture over the undeformed object square [-_TEX_HALF, _TEX_HALF]^2."""
  rng = np.random.default_rng(look.pattern_seed)
  u = np.linspace(-_TEX_HALF, _TEX_HALF, _TEX, dtype=np.float32)
  yy, xx = np.meshgrid(u, u, indexing="ij")
  a = rng.uniform(0, np.pi)
  xr, yr = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
  if look.kind == "solid":
    t = 0.35 * _smooth_noise(rng, _TEX, _TEX, 4)
  elif look.kind == "stripes":
    s = np.sin(2 * np.pi * rng.uniform(1.2, 3.0) * xr + rng.uniform(0, 2 * np.pi))
    t = np.clip(0.5 + 2.0 * s, 0, 1)
  elif look.kind == "checker":
    f = rng.uniform(1.5, 3.0)
    t = (np.floor(xr * f) + np.floor(yr * f)) % 2
  elif look.kind == "spots":
    t = np.zeros((_TEX, _TEX), np.float32)
    for _ in range(int(rng.integers(4, 12))):
      c = rng.uniform(0, _TEX, 2).astype(int)
      cv2.circle(t, (int(c[0]), int(c[1])), int(rng.uniform(0.06, 0.2) * _TEX), 1.0, -1)
  else:
    t = np.clip(0.5 + 0.5 * xr / _TEX_HALF, 0, 1)
  t = t.astype(np.float32)[..., None]
  col = look.colors[0] * (1 - t) + look.colors[1] * t
  shade = 1.0 + 0.15 * (_smooth_noise(rng, _TEX, _TEX, 3) - 0.5)
  return np.clip(col * shade[..., None] + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# shapes and their motion


def _profile(rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
  """A star-shaped outline r(phi) <= 1 (touching 1): ellipse, polygon, star or blob."""
  kind = int(rng.integers(4))
  phi0 = rng.uniform(0, 2 * np.pi)
  if kind == 0:
    b = rng.uniform(0.45, 1.0)
    return lambda p: 1.0 / np.sqrt(np.cos(p - phi0) ** 2 + (np.sin(p - phi0) / b) ** 2)
  if kind == 1:
    n = int(rng.integers(3, 8))
    return lambda p: np.cos(np.pi / n) / np.cos(np.mod(p - phi0, 2 * np.pi / n) - np.pi / n)
  if kind == 2:
    n, inner = int(rng.integers(4, 8)), rng.uniform(0.4, 0.65)
    return lambda p: inner + (1 - inner) * np.abs(2 * np.mod((p - phi0) * n / (2 * np.pi), 1.0) - 1)
  amps = rng.uniform(0, 0.15, 3)
  phases = rng.uniform(0, 2 * np.pi, 3)
  return lambda p: (
    (1 + sum(amps[j] * np.sin((j + 2) * p + phases[j]) for j in range(3))) / (1 + amps.sum())
  )


@dataclasses.dataclass
class _Warp:
  """Non-rigid radial warp m(t, phi) = 1 + sum_j a_j sin(k_j phi + w_j t + psi_j)."""

  k: np.ndarray
  a: np.ndarray
  w: np.ndarray
  psi: np.ndarray

  def __call__(self, t, phi):
    """m at frame(s) t and angle(s) phi (broadcast); float32 phi with scalar t stays float32."""
    out = 1.0
    for j in range(len(self.a)):
      phase = self.w[j] * t + self.psi[j]
      phase = float(phase) if np.ndim(phase) == 0 else phase
      out = out + float(self.a[j]) * np.sin(float(self.k[j]) * phi + phase)
    return out


def _new_warp(rng: np.random.Generator, amp: float) -> _Warp:
  w = 2 * np.pi / rng.uniform(8, 30, 2) * rng.choice([-1.0, 1.0], 2)
  return _Warp(
    rng.integers(2, 6, 2).astype(float),
    rng.uniform(0.3, 1.0, 2) * amp / 2,
    w,
    rng.uniform(0, 2 * np.pi, 2),
  )


def _motion_affines(
  rng: np.random.Generator, t: int, d: Difficulty
) -> Tuple[np.ndarray, np.ndarray]:
  """[T,2,2] rotation @ area-preserving stretch, and the [T] log-scale change (0 at frame 0)."""
  ts = np.arange(t, dtype=float)
  psi = rng.uniform(0, 2 * np.pi)
  period = rng.uniform(12, 40)
  g = rng.uniform(0.3, 1.0) * d.scale_amp * (
    np.sin(2 * np.pi * ts / period + psi) - np.sin(psi)
  ) + rng.uniform(-1, 1) * d.scale_amp * ts / max(t - 1, 1)
  theta = rng.uniform(0, 2 * np.pi) + np.deg2rad(rng.uniform(-1, 1) * d.rotation) * ts
  eps = rng.uniform(-0.2, 0.2) + rng.uniform(0, 1) * d.deform_amp * np.sin(
    2 * np.pi * ts / rng.uniform(10, 30) + rng.uniform(0, 2 * np.pi)
  )
  c, sn = np.cos(theta), np.sin(theta)
  rot = np.stack([np.stack([c, -sn], -1), np.stack([sn, c], -1)], -2)
  stretch = np.zeros((t, 2, 2))
  stretch[:, 0, 0], stretch[:, 1, 1] = np.exp(eps), np.exp(-eps)
  return rot @ stretch, g


@dataclasses.dataclass
class _Object:
  profile: Callable[[np.ndarray], np.ndarray]
  warp: _Warp
  affine: np.ndarray  # [T,2,2]
  rel: np.ndarray  # [T,N,2] outline relative to the centre
  extent: np.ndarray  # [T] max outline radius, px
  look: _Look
  relation: int
  center: Optional[np.ndarray] = None  # [T,2]


def _polygon_area(v: np.ndarray) -> float:
  x, y = v[:, 0], v[:, 1]
  return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _outline(profile, warp: _Warp, affine: np.ndarray) -> np.ndarray:
  t = np.arange(affine.shape[0])
  r = profile(_PHI)[None] * warp(t[:, None], _PHI[None])
  return np.einsum("tij,tnj->tni", affine, r[..., None] * _DIRS)


def _new_object(
  rng,
  t: int,
  hw: Tuple[int, int],
  area_frac: float,
  look: _Look,
  relation: int,
  d: Difficulty,
  profile=None,
) -> _Object:
  """Shape, warp and affines, scaled so the frame-0 outline covers area_frac of the image."""
  profile = profile if profile is not None else _profile(rng)
  warp = _new_warp(rng, d.deform_amp)
  rot_stretch, g = _motion_affines(rng, t, d)
  rel1 = _outline(profile, warp, rot_stretch)
  ext1 = np.linalg.norm(rel1, axis=-1).max(-1)
  s0 = min(
    math.sqrt(area_frac * hw[0] * hw[1] / max(_polygon_area(rel1[0]), 1e-6)),
    0.4 * min(hw) / ext1[0],
  )
  s = np.minimum(s0 * np.exp(np.clip(g, np.log(0.5), np.log(2.0))), 0.45 * min(hw) / ext1)
  return _Object(
    profile, warp, s[:, None, None] * rot_stretch, s[:, None, None] * rel1, s * ext1, look, relation
  )


def _random_walk(
  rng, c0: np.ndarray, t: int, speed: float, accel: float, lo: np.ndarray, hi: np.ndarray
):
  """[T,2] centres: velocity random walk bouncing inside [lo, hi]."""
  c = np.zeros((t, 2))
  c[0] = c0
  a = rng.uniform(0, 2 * np.pi)
  v = speed * np.array([np.cos(a), np.sin(a)])
  for i in range(1, t):
    v = v + rng.normal(0, accel, 2)
    n = float(np.linalg.norm(v))
    v *= np.clip(n, 0.3 * speed, 1.5 * speed + 1e-9) / max(n, 1e-9)
    p = c[i - 1] + v
    for k in range(2):
      if p[k] < lo[k]:
        p[k], v[k] = min(2 * lo[k] - p[k], hi[k]), abs(v[k])
      elif p[k] > hi[k]:
        p[k], v[k] = max(2 * hi[k] - p[k], lo[k]), -abs(v[k])
    c[i] = p
  return c


def _ease(t: np.ndarray, t0: float, ramp: float, hold: float) -> np.ndarray:
  """0 -> 1 (raised cosine over `ramp` frames), 1 for `hold` frames, 1 -> 0."""
  up = np.clip((t - t0) / ramp, 0, 1)
  down = np.clip((t - t0 - ramp - hold) / ramp, 0, 1)
  return 0.5 - 0.5 * np.cos(np.pi * up) - (0.5 - 0.5 * np.cos(np.pi * down))


def _add_exit(rng, obj: _Object, t: int, hw: Tuple[int, int]) -> None:
  """Push the object fully out of the frame through its nearest border for 1-3 frames, then back."""
  ramp, hold = int(rng.integers(3, 6)), int(rng.integers(0, 3))
  if t < 2 * ramp + hold + 2:
    return
  t0 = int(rng.integers(1, t - 2 * ramp - hold))
  out = np.arange(t0 + ramp, t0 + ramp + hold + 1)
  c = obj.center[out]
  h, w = hw
  dists = np.stack([c[:, 0], w - 1 - c[:, 0], c[:, 1], h - 1 - c[:, 1]], -1)
  side = int(np.argmin(dists.mean(0)))
  push = float(np.max(dists[:, side] + obj.extent[out] + 2.0))
  axis, sign = side // 2, (-1.0 if side % 2 == 0 else 1.0)
  obj.center = obj.center.copy()
  obj.center[:, axis] += sign * push * _ease(np.arange(t, dtype=float), t0, ramp, hold)


def _crossing_path(
  rng, start: np.ndarray, target: _Object, t: int, ref: float
) -> Optional[np.ndarray]:
  """A straight path from `start` that passes (near) object 1's centre at a middle frame."""
  if t < 4:
    return None
  tx = int(rng.integers(max(2, int(0.3 * t)), max(3, int(0.85 * t))))
  aim = target.center[tx] + rng.uniform(-0.4, 0.4, 2) * target.extent[tx]
  vel = (aim - start) / tx
  if np.linalg.norm(vel) > 12.0 * ref:
    return None
  return start + np.arange(t)[:, None] * vel


# --------------------------------------------------------------------------------------------------
# foreground occluder


@dataclasses.dataclass
class _Occluder:
  center: np.ndarray  # [T,2]
  axes: np.ndarray  # [2,2] columns: sweep direction n, bar direction n_perp
  half: np.ndarray  # [2] half width (along n), half length
  look: _Look

  def corners(self) -> np.ndarray:
    sgn = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], float) * self.half
    return self.center[:, None] + sgn @ self.axes.T


def _occluder(
  rng, target: _Object, t: int, hw: Tuple[int, int], d: Difficulty, look: _Look, ref: float
) -> Optional[_Occluder]:
  """A long bar sweeping over object 1 (it follows object 1's motion plus a constant sweep speed).

  A full bar hides object 1 in frames tm .. tm+dur-1; every bar is clear of object 1 at frame 0.
  """
  if t < 4:
    return None
  a = rng.uniform(0, 2 * np.pi)
  n = np.array([np.cos(a), np.sin(a)])
  axes = np.stack([n, np.array([-n[1], n[0]])], -1)
  r_max, r0 = float(target.extent.max()), float(target.extent[0])
  full = rng.random() < d.p_full_occlusion
  first = max(1, int(0.4 * t))
  lo, hi = d.full_occlusion_frames
  dur = min(int(rng.integers(lo, hi + 1)) if full else 1, t - first)
  last = t - dur - 3 if t - dur - 3 >= first else t - dur  # leave frames to reappear in
  tm = int(rng.integers(first, last + 1))
  tc = tm + 0.5 * (dur - 1)
  v = rng.uniform(3.0, 8.0) * ref
  if full:  # half_w >= r_max + v (dur-1)/2 + 1 and v tc >= half_w + r0 + 2
    v = max(v, (r_max + r0 + 3.0) / tm)
    half_w = r_max + 0.5 * v * (dur - 1) + 1.0
  else:
    half_w = rng.uniform(0.15, 0.4) * float(target.extent.mean())
    v = max(v, (half_w + r0 + 2.0) / tc)
  if v > 0.6 * max(hw):
    return None
  center = target.center + (np.arange(t) - tc)[:, None] * v * n
  return _Occluder(center, axes, np.array([half_w, 1.5 * max(hw)]), look)


# --------------------------------------------------------------------------------------------------
# rasterisation and ground truth


def _fill(poly: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
  img = np.zeros(hw, np.uint8)
  pts = np.round(poly * (1 << _SHIFT)).astype(np.int32)
  cv2.fillPoly(img, [pts.reshape(-1, 1, 2)], 1, cv2.LINE_8, _SHIFT)
  return img.view(bool)


def _composite(amodal: np.ndarray, depth: np.ndarray, occ: np.ndarray) -> np.ndarray:
  masks = np.zeros(occ.shape, np.uint8)
  for k in np.argsort(depth, kind="stable"):
    masks[amodal[:, k]] = k + 1
  masks[occ] = 0
  return masks


def _pixel(xy: np.ndarray) -> np.ndarray:
  return np.floor(xy + 0.5).astype(np.int64)


def _points_world(
  obj: _Object, rho0: np.ndarray, phi: np.ndarray, frames: Optional[int] = None
) -> np.ndarray:
  """[T,P,2] keypoints given in undeformed polar coordinates (rho0, phi) of the object (first
  `frames`)."""
  t = np.arange(obj.affine.shape[0] if frames is None else frames)
  rho = rho0[None] * obj.warp(t[:, None], phi[None])
  local = rho[..., None] * np.stack([np.cos(phi), np.sin(phi)], -1)[None]
  return obj.center[t, None] + np.einsum("tij,tpj->tpi", obj.affine[t], local)


def _point_visibility(points: np.ndarray, masks: np.ndarray, obj_id: np.ndarray) -> np.ndarray:
  """points [T,K,P,2] -> bool [T,K,P]: inside the frame and on the object's visible mask."""
  t, h, w = masks.shape
  px = _pixel(points)
  inside = (px[..., 0] >= 0) & (px[..., 0] < w) & (px[..., 1] >= 0) & (px[..., 1] < h)
  xi, yi = np.clip(px[..., 0], 0, w - 1), np.clip(px[..., 1], 0, h - 1)
  ti = np.arange(t)[:, None, None]
  return inside & (masks[ti, yi, xi] == obj_id)


def _boxes(masks: np.ndarray, k: int) -> np.ndarray:
  """[T,K,4] xywh pixel-extent boxes of each object's visible pixels (`prompts.mask_to_box`,
  w = x_max + 1 - x0); NaN rows where there are none."""
  t = masks.shape[0]
  boxes = np.full((t, k, 4), np.nan, np.float32)
  for j in range(k):
    m = masks == j + 1
    has = m.any(axis=(1, 2))
    xyxy = mask_to_box(m)
    boxes[has, j] = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], -1)[has]
  return boxes


def _counts(masks: np.ndarray, k: int) -> np.ndarray:
  """[T,K] visible pixels per object."""
  return np.stack([np.bincount(m.ravel(), minlength=k + 1)[1 : k + 1] for m in masks])


# --------------------------------------------------------------------------------------------------
# scene sampling


@dataclasses.dataclass
class _Scene:
  objects: list
  occluder: Optional[_Occluder]
  depth: np.ndarray
  amodal: np.ndarray
  occ_mask: np.ndarray
  masks: np.ndarray
  points: np.ndarray


def _looks(rng, k: int, d: Difficulty, bg_mean: np.ndarray):
  target = _new_look(rng, bg_mean[None])
  looks, relations = [target], [NOT_SIMILAR]
  for _ in range(1, k):
    u = rng.random()
    if u < d.p_same:
      looks.append(target)
      relations.append(SAME)
    elif u < d.p_same + d.p_similar:
      looks.append(_similar_look(rng, target))
      relations.append(SIMILAR)
    else:
      looks.append(_new_look(rng, np.stack([bg_mean, target.colors[0], target.colors[1]])))
      relations.append(NOT_SIMILAR)
  return looks, relations


def _place(rng, objs: list, hw: Tuple[int, int]) -> Optional[np.ndarray]:
  """Frame-0 centres with every outline inside the frame, spread apart when possible."""
  h, w = hw
  centers = []
  for o in objs:
    r = float(o.extent[0])
    if 2 * r + 3 > min(h, w):
      return None
    best, best_gap = None, -np.inf
    for _ in range(20):
      c = rng.uniform([r + 1, r + 1], [w - 2 - r, h - 2 - r])
      placed = zip(centers, objs[: len(centers)])
      gap = min(
        [np.linalg.norm(c - p) - 0.9 * (r + float(q.extent[0])) for p, q in placed] + [np.inf]
      )
      if gap >= 0:
        best = c
        break
      if gap > best_gap:
        best, best_gap = c, gap
    centers.append(best)
  return np.stack(centers)


def _sample_points(rng, obj: _Object, masks0: np.ndarray, obj_id: int, p: int):
  """P keypoints inside the object that are visible at frame 0, in undeformed polar coordinates."""
  phi = rng.uniform(0, 2 * np.pi, 24 * p)
  rho0 = np.sqrt(rng.random(24 * p)) * _POINT_DEPTH * obj.profile(phi)
  xy0 = _points_world(obj, rho0, phi, 1)[0]
  h, w = masks0.shape
  px = _pixel(xy0)
  ok = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
  ok[ok] = masks0[px[ok, 1], px[ok, 0]] == obj_id
  idx = np.flatnonzero(ok)
  if idx.size < p:
    return None
  return rho0[idx[:p]], phi[idx[:p]]


def _sample_scene(
  rng, t: int, hw: Tuple[int, int], k: int, d: Difficulty, bg_mean: np.ndarray, p: int, min_px: int
) -> Optional[_Scene]:
  h, w = hw
  ref = min(h, w) / 128.0
  looks, relations = _looks(rng, k, d, bg_mean)
  target_frac = rng.uniform(0.06, 0.16)
  objs = []
  for i in range(k):
    if relations[i] != NOT_SIMILAR:
      frac, shape = (
        target_frac * rng.uniform(0.5, 1.1),
        (objs[0].profile if rng.random() < 0.5 else None),
      )
    else:
      frac, shape = rng.uniform(0.02, 0.1), None
    objs.append(
      _new_object(rng, t, hw, frac if i else target_frac, looks[i], relations[i], d, shape)
    )
  centers = _place(rng, objs, hw)
  if centers is None:
    return None
  for o, c0 in zip(objs, centers):
    m = 0.3 * float(o.extent[0])
    speed = rng.uniform(*d.speed) * ref
    o.center = _random_walk(
      rng, c0, t, speed, d.accel * ref, np.array([m, m]), np.array([w - 1 - m, h - 1 - m])
    )
  for o in objs[1:]:
    if rng.random() < d.p_cross:
      path = _crossing_path(rng, o.center[0], objs[0], t, ref)
      if path is not None:
        o.center = path
  for o in objs:
    if rng.random() < d.p_exit:
      _add_exit(rng, o, t, hw)
  occ = None
  if rng.random() < d.p_occluder:
    occ = _occluder(rng, objs[0], t, hw, d, _new_look(rng, bg_mean[None]), ref)
  depth = rng.permutation(k).astype(np.int32)
  amodal = np.stack([np.stack([_fill(o.rel[i] + o.center[i], hw) for o in objs]) for i in range(t)])
  occ_mask = (
    np.stack([_fill(c, hw) for c in occ.corners()])
    if occ is not None
    else np.zeros((t, h, w), bool)
  )
  masks = _composite(amodal, depth, occ_mask)
  vis0 = np.bincount(masks[0].ravel(), minlength=k + 1)[1:]
  amo0 = amodal[0].reshape(k, -1).sum(1)
  if not (0.05 * h * w <= vis0[0] <= 0.25 * h * w and vis0[0] >= 0.8 * amo0[0]):
    return None
  if np.any(vis0 < np.maximum(min_px, 0.3 * amo0)):
    return None
  points = []
  for i, o in enumerate(objs):
    s = _sample_points(rng, o, masks[0], i + 1, p)
    if s is None:
      return None
    points.append(_points_world(o, *s))
  return _Scene(objs, occ, depth, amodal, occ_mask, masks, np.stack(points, 1))


# --------------------------------------------------------------------------------------------------
# rendering


def _paint(
  frame: np.ndarray,
  region: np.ndarray,
  y0: int,
  x0: int,
  tex: np.ndarray,
  center: np.ndarray,
  inv: np.ndarray,
  gain: float,
  warp: Optional[_Warp] = None,
  ti: int = 0,
) -> None:
  """Fill `region` of frame[y0:, x0:] with the texture seen through the inverse object mapping."""
  ys, xs = np.nonzero(region)
  ys, xs = ys + y0, xs + x0
  dx = xs.astype(np.float32) - np.float32(center[0])
  dy = ys.astype(np.float32) - np.float32(center[1])
  inv = inv.astype(np.float32)
  lx, ly = inv[0, 0] * dx + inv[0, 1] * dy, inv[1, 0] * dx + inv[1, 1] * dy
  if warp is not None:
    m = warp(ti, np.arctan2(ly, lx))
    lx, ly = lx / m, ly / m
  scale = np.float32(_TEX / (2 * _TEX_HALF))
  off = np.float32(_TEX / 2 - 0.5)
  n = lx.size  # remap wants < 32767 rows: lay the pixels out 512 a row
  mx, my = np.zeros((2, n + (-n) % 512), np.float32)
  mx[:n], my[:n] = lx * scale + off, ly * scale + off
  mx, my = mx.reshape(-1, 512), my.reshape(-1, 512)
  patch = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
  if gain != 1.0:
    patch = cv2.convertScaleAbs(patch, alpha=gain)
  frame[ys, xs] = patch.reshape(-1, 3)[:n]


def _bbox(poly: np.ndarray, hw: Tuple[int, int]):
  lo = np.maximum(np.floor(poly.min(0)).astype(int) - 1, 0)
  hi = np.minimum(np.ceil(poly.max(0)).astype(int) + 2, [hw[1], hw[0]])
  return lo, hi


def _flicker(rng, t: int, amp: float) -> np.ndarray:
  """[T] smooth brightness gain around 1."""
  return 1.0 + amp * np.sin(
    2 * np.pi * np.arange(t) / rng.uniform(8, 40) + rng.uniform(0, 2 * np.pi)
  )


def _render(
  rng,
  scene: _Scene,
  canvas: np.ndarray,
  offsets: np.ndarray,
  hw: Tuple[int, int],
  d: Difficulty,
  ref: float,
) -> np.ndarray:
  h, w = hw
  t, k = scene.masks.shape[0], len(scene.objects)
  gains = np.stack(
    [_flicker(rng, t, d.illumination) for _ in range(k + 1)], -1
  )  # last column: global
  canvas = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
  textures = [_texture(o.look) for o in scene.objects]
  inverses = [np.linalg.inv(o.affine) for o in scene.objects]
  order = np.argsort(scene.depth, kind="stable")
  occ = scene.occluder
  if occ is not None:
    occ_tex = _texture(occ.look)
    occ_inv = np.linalg.inv(occ.axes * (20.0 * ref))
    occ_poly = occ.corners()
  frames = np.empty((t, h, w, 3), np.uint8)
  for i in range(t):
    if canvas.shape[:2] == (h, w):
      frames[i] = canvas
    else:
      m = np.array([[1.0, 0.0, offsets[i, 0]], [0.0, 1.0, offsets[i, 1]]])
      cv2.warpAffine(
        canvas,
        m,
        (w, h),
        dst=frames[i],
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
      )
    for j in order:
      o = scene.objects[j]
      lo, hi = _bbox(o.rel[i] + o.center[i], hw)
      if np.any(hi <= lo):
        continue
      region = scene.amodal[i, j, lo[1] : hi[1], lo[0] : hi[0]]
      if region.any():
        _paint(
          frames[i],
          region,
          lo[1],
          lo[0],
          textures[j],
          o.center[i],
          inverses[j][i],
          gains[i, j],
          o.warp,
          i,
        )
    if occ is not None:
      lo, hi = _bbox(occ_poly[i], hw)
      if np.all(hi > lo):
        region = scene.occ_mask[i, lo[1] : hi[1], lo[0] : hi[0]]
        if region.any():
          _paint(frames[i], region, lo[1], lo[0], occ_tex, occ.center[i], occ_inv, 1.0)
    cv2.convertScaleAbs(frames[i], dst=frames[i], alpha=gains[i, -1])
  if d.noise > 0:  # uniform sensor noise of std ~ d.noise (cheaper than normal draws)
    a = int(min(round(d.noise * math.sqrt(3.0)), 127))
    noise = rng.integers(-a, a + 1, frames.shape, dtype=np.int8)
    frames = cv2.add(frames.reshape(t * h, w, 3), noise.reshape(t * h, w, 3), dtype=cv2.CV_8U)
  return frames.reshape(t, h, w, 3)


# --------------------------------------------------------------------------------------------------
# public API


def _checked(
  num_frames=24,
  height=128,
  width=128,
  num_objects=(1, 3),
  difficulty="normal",
  num_points=8,
  min_visible_pixels=16,
):
  """The generate_video options, checked (ValueError naming the bad one)."""
  return (
    _check_int("num_frames", num_frames, 1),
    _check_int("height", height, 32),
    _check_int("width", width, 32),
    _object_range(num_objects),
    _difficulty(difficulty),
    _check_int("num_points", num_points, 1),
    _check_int("min_visible_pixels", min_visible_pixels, 1),
  )


def generate_video(
  seed: int,
  *,
  num_frames: int = 24,
  height: int = 128,
  width: int = 128,
  num_objects: Union[int, Tuple[int, int]] = (1, 3),
  difficulty: Union[str, Difficulty] = "normal",
  num_points: int = 8,
  min_visible_pixels: int = 16,
) -> dict:
  """One synthetic video (see the module docstring for the keys), a pure function of its arguments.

  seed: int >= 0. num_frames >= 1; height, width >= 32. num_objects: K, or an inclusive (min, max)
  range drawn from per video, 1 <= K <= MAX_OBJECTS. difficulty: "easy" / "normal" / "hard" or a
  Difficulty (e.g. dataclasses.replace(DIFFICULTIES["normal"], p_occluder=1.0)). num_points: P
  keypoints per object. min_visible_pixels: the visible-pixel count from which `visible` is True.
  RuntimeError when no valid frame 0 is found in 200 scene draws (only for many objects in tiny
  frames, e.g. 8 objects in 32 x 32).
  """
  seed = _check_int("seed", seed, 0)
  t, h, w, (lo, hi), d, p, min_px = _checked(
    num_frames, height, width, num_objects, difficulty, num_points, min_visible_pixels
  )
  rng = np.random.default_rng(seed)
  k = int(rng.integers(lo, hi + 1))
  canvas, offsets = _background(rng, h, w, t, d.pan * min(h, w) / 128.0)
  bg_mean = canvas.reshape(-1, 3).mean(0)
  for _ in range(_MAX_ATTEMPTS):
    scene = _sample_scene(rng, t, (h, w), k, d, bg_mean, p, min_px)
    if scene is not None:
      break
  else:
    raise RuntimeError(
      f"synthetic scene for seed {seed} not found in {_MAX_ATTEMPTS} attempts "
      f"({h}x{w}, {k} objects, {p} points): use a larger frame or fewer objects"
    )
  frames = _render(rng, scene, canvas, offsets, (h, w), d, min(h, w) / 128.0)
  counts = _counts(scene.masks, k)
  obj_id = np.arange(1, k + 1)[None, :, None]
  return {
    "frames": frames,
    "masks": scene.masks,
    "amodal_masks": scene.amodal,
    "occluder_mask": scene.occ_mask,
    "boxes_xywh": _boxes(scene.masks, k),
    "visible": counts >= min_px,
    "points_xy": scene.points.astype(np.float32),
    "point_visible": _point_visibility(scene.points.astype(np.float32), scene.masks, obj_id),
    "depth": scene.depth,
    "distractor": np.array([o.relation for o in scene.objects], np.int8),
  }


def video_seed(seed: int, index: int) -> int:
  """The generate_video seed of video `index` of dataset `seed` (spawn key of
  SeedSequence(seed))."""
  seed, index = _check_int("seed", seed, 0), _check_int("index", index, 0)
  return int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, np.uint64)[0])


def generate_dataset(seed: int, num_videos: int, **kw) -> Iterator[Tuple[str, dict]]:
  """(name, video) for videos 0..num_videos-1, made lazily; `kw` goes to generate_video.

  Video i is generate_video(video_seed(seed, i), **kw) and is named f"synth{seed}_{i:05d}".
  """
  seed = _check_int("seed", seed, 0)
  num_videos = _check_int("num_videos", num_videos, 0)
  _checked(**kw)
  return (
    (f"synth{seed}_{i:05d}", generate_video(video_seed(seed, i), **kw)) for i in range(num_videos)
  )
