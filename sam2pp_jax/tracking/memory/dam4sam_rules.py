"""DAM4SAM's admission test for its distractor-resolving memory (DRM), as fixed-shape JAX.

Sources (read for the math only; nothing here is their code or their comments, so that this
file stays under this project's licence and house style):
  D = github:jovanavidenovic/DAM4SAM 9c95450, dam4sam_tracker.py; "D sam2/..." its SAM 2 fork.
  M = github:alanlukezic/d4sm 67d5dfe (multi-object port), tracking_wrapper_mot.py.
  V = vot-toolkit 0.7.1 (pinned at D requirements.txt:115), vot/region/{raster,shapes}.py.

The admission test, per object, on a tracked frame t >= 1 (frame 0 holds the initial mask and
is never tested; D:137-138 start the size list empty and last_added at -1). All must hold:
  1. iou_ok: the largest of the 3 predicted IoUs > 0.8, strictly (D:211-212, D:231; M:508-509,
     M:527). The IoUs are float32 and the 0.8 is a float64 literal; with NumPy 1.26 (pinned,
     D requirements.txt:59) the comparison happens in float64, so an IoU of exactly
     float32(0.8) = 0.800000012 IS admitted (NumPy 2's NEP 50 would compare in float32 and
     refuse it). Kept: `iou_ok` tests the float32 value against the real number 0.8.
  2. the chosen mask is non-empty (D:217, D:231 `n_pixels >= 1`; M gates the whole memory
     update on it, M:453). The pixel count is at VIDEO resolution: the argmax-IoU low-res
     logits, holes up to 8 px filled (D sam2/build_sam.py:122, D sam2/sam2_video_predictor.py:
     1058-1061; M:424-427), bilinearly upsampled to H x W, > 0 (D sam2/sam2_video_predictor.py:
     816-818 and D:208; M:429-432).
  3. area_ratio_ok: 0.8 <= n / median(S) <= 1.2, both ends inclusive (D:231; M:527), where
     the size list gets the current frame's count appended BEFORE the test (D:218; M:514), so
     the current frame is part of its own median; S = the last 10 entries >= 1 among the last
     300 entries of that list (D:220-222; M:516-518), median with NumPy's mean of the two
     middle values for an even count. The test fails outright while the list has a single
     entry (the first tracked frame) or when n < 1 (D:219, D:224). D appends every tracked
     frame, empty ones included (they count towards the 300-entry window but not to S);
     M appends only frames where the object is visible (M:453, M:514), so its window is the
     last 300 visible frames. Because the current frame is in S, the first non-empty frame
     after an all-empty history has ratio exactly 1 and passes.
  4. spacing_ok: t - last_added > 5, or nothing admitted yet (last_added == -1) (D:231; M:528
     with update_delta = 5). last_added starts at -1, so frames 1..4 are not blocked either.
  5. distractor_present (D:232-254; M:531-548): for each of the 2 candidates not chosen
     (the IoU argmax is dropped by index, D:214; M:511), at video resolution: d = alt AND NOT
     chosen; if d is empty the alternative is DROPPED (D:242; M:537), not failed; else keep
     the largest 8-connected component of d (cv2.connectedComponentsWithStats, connectivity=8,
     ties to the lowest label via argmax: D utils/utils.py:19-21; M:72-74), union it with the
     chosen mask and take the box IoU of union vs chosen (below). Admit if AT LEAST ONE kept
     alternative has box IoU <= 0.7 (D:254 `min(ious) <= 0.7`); no kept alternative means no
     admission (D:243).
The chosen mask of tests 2 and 5 is the hole-filled one while the alternatives are not
hole-filled (D sam2/sam2_video_predictor.py:820-834: raw multimask logits, object-score gated
at D sam2/modeling/sam2_base.py:357-366); callers pass both as they come.

Box IoU (the two variants differ here; `variant` picks one):
  * "dam4sam" (D:237, D:247-249): V's Mask -> Rectangle conversion sets width = x_max - x_min
    (V shapes.py:422-425) and V rasterizes a rectangle over pixels x .. x + width - 1
    (V raster.py:45-70, 189-198), so each box LOSES its last column and row. The IoU is the
    pixel IoU of those shrunken boxes; if the pair's union bounds are at most one pixel wide
    or tall it is 1 by definition (V raster.py:306-308), and 0 when the union has no pixels.
  * "d4sm" (M:201-208, M:542-544): inclusive boxes (width = x_max - x_min + 1) through the
    same V overlap, so only the union-bounds rule above remains as a quirk.
Other differences: M pushes sizes only when visible (3. above); M defers the DRM insertion
of an admitted frame to the next frame (see the memory notes below). M's IoU threshold
compare depends on the NumPy installed (unpinned there: M setup.py:27 numpy>=1.24.4); the
float64 reading is used for both.

Thresholds are compared exactly: ratios of pixel counts are tested by integer cross-
multiplication against the threshold written as a fraction (0.8 = 4/5, 0.7 = 7/10), which is
what the originals' float64 division gives for any realistic frame size (a float32 division
could flip decisions on large masks). That needs threshold denominators <= 100 and
2 * H * W * 100 < 2^31; other thresholds fall back to float32.

The largest-component step has no sensible fixed-shape form (labelling is a union-find), so
`largest_component` runs OpenCV on the host through `jax.pure_callback` (opencv-python-
headless, a runtime dependency). `admit` only calls it when some object passes tests 1-4.
Everything else is jnp and works under jit / vmap / lax.scan with a leading batch of objects.

Memory notes for the lead (constants below; not implemented here unless stated):
  * DAM4SAM read rule (D sam2/modeling/sam2_base.py:541-630, config D sam2/sam21pp_hiera_l.yaml
    :88 num_maskmem 7, :123 stride 5, :125 max_cond_frames_in_attn 4). An admitted frame is
    stored as a conditioning frame (D sam2/sam2_video_predictor.py:329-347) and removed from
    the non-conditioning outputs at the next propagation (same file :706-707); there its
    memory is re-encoded from the stored hole-filled low-res mask upsampled to 1024 and
    binarized (same file :599-616 with is_mask_from_pts=True; binarize flag D sam2/build_sam.py
    :120). At frame t the DRM read is frame 0 plus the 3 newest admitted frames < t - 1
    (D sam2/modeling/sam2_utils.py:36-48; frame t - 1 is kept out of the DRM read on purpose),
    all with temporal encoding index num_maskmem - 1. The RAM has 7 - (1 + #DRM read) slots;
    "visible" there is the LOW-RES (256 x 256) hole-filled mask being non-empty (D sam2/
    sam2_video_predictor.py:1070), not the video-resolution count of test 2. Slot 0 is the
    newest frame in 1 .. t - 1 that is visible and not admitted, except that t - 1 itself is
    taken even if it was admitted at t - 1 (it is read from the conditioning outputs, :565-566).
    Slot k >= 1 is the newest multiple of 5 strictly below slot k - 1's frame that is visible
    and not admitted; frame 0 is never a RAM frame; once a slot finds nothing all later slots
    are empty. Slot k gets temporal encoding index k (the sort at :604-615 puts the empty
    slots, whose frame keys are <= 0, before the real ones). Implemented: `drm_read_frames`,
    `ram_frames` (histories indexed by absolute frame, [..., T]).
  * d4sm capacities (M:155-158): update_delta 5, max_ram 3, max_drm 3, use_last True; the
    init frame is always kept, total capacity num_maskmem = 7. Memory (and pointers) are
    updated only when the object is visible (M:453). RAM write (M:480-494, the two inner
    branches are identical): no RAM entry yet -> append; newest RAM entry's frame % 5 == 0 ->
    append; else overwrite the newest RAM entry. So the RAM is a chain of multiples of 5 plus
    the newest visible frame. RAM eviction (M:501-503): drop the oldest RAM entry only when
    RAM > 3 AND total > 7 (so the RAM borrows free DRM places). DRM write: with use_last the
    admitted frame t is always the newest RAM entry, so the insertion is deferred (M:558-561):
    at the start of frame t + 1, visible or not, that RAM entry is turned into a DRM entry in
    place and, if more than 3 DRM entries, the oldest DRM entry is dropped (M:443-450). The
    other branch (M:562-576: append; if total > 7 drop the oldest DRM entry when DRM > 3,
    else the oldest RAM entry) only runs with use_last False. Read order is list order with
    the init and DRM entries at temporal index num_maskmem - 1 and a RAM entry at index
    (list length - its position - 1), which counts DRM entries stored after it (d4sm
    sam2/modeling/sam2_base.py:717-724).
"""

from __future__ import annotations

from fractions import Fraction

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

VARIANTS = ("dam4sam", "d4sm")

# ---- admission test (D:211-254, M:508-548) ----
IOU_MIN = 0.8  # strict: max predicted IoU > 0.8
AREA_RATIO = (0.8, 1.2)  # inclusive bounds on n / median
SIZE_WINDOW = 300  # entries of the size list searched
MEDIAN_OF = 10  # newest non-empty entries in the median
MIN_GAP = 5  # t - last_added > 5
DISTRACTOR_BOX_IOU_MAX = 0.7  # admit if some alternative's box IoU <= 0.7
CC_CONNECTIVITY = 8

# ---- DAM4SAM memory read (D sam2/sam21pp_hiera_l.yaml:88,123,125) ----
NUM_MASKMEM = 7
RAM_STRIDE = 5
MAX_DRM_READ = 3  # max_cond_frames_in_attn = 4 = the init frame + 3 admitted frames

# ---- d4sm memory capacities (M:155-158) ----
D4SM_UPDATE_DELTA = 5
D4SM_MAX_RAM = 3
D4SM_MAX_DRM = 3
D4SM_USE_LAST = True

_MAX_EXACT_DENOMINATOR = 100


def check_variant(variant: str) -> str:
  if variant not in VARIANTS:
    raise ValueError(f"DAM4SAM variant {variant!r} is unknown; use one of {', '.join(VARIANTS)}")
  return variant


@flax.struct.dataclass
class DrmHistory:
  """Per object ([...] leading dims): the size list as a ring of the last `window` entries
  (`sizes`, pixel counts; `frames`, the frame each came from, -1 for an unused slot), the
  number of entries ever pushed (`count`) and the last admitted frame (`last_added`, -1: none).
  Entry order comes from `count` (the newest sits at slot (count - 1) % window)."""

  sizes: jax.Array  # int32 [..., W]
  frames: jax.Array  # int32 [..., W]
  count: jax.Array  # int32 [...]
  last_added: jax.Array  # int32 [...]

  @property
  def window(self) -> int:
    return self.sizes.shape[-1]


def init_state(batch: int | tuple[int, ...] = (), window: int = SIZE_WINDOW) -> DrmHistory:
  """An empty history for `batch` objects (an int or a tuple of leading dims)."""
  lead = (batch,) if isinstance(batch, int) else tuple(batch)
  return DrmHistory(
    sizes=jnp.zeros(lead + (window,), jnp.int32),
    frames=jnp.full(lead + (window,), -1, jnp.int32),
    count=jnp.zeros(lead, jnp.int32),
    last_added=jnp.full(lead, -1, jnp.int32),
  )


def push_size(state: DrmHistory, t, n_pixels, where=None) -> DrmHistory:
  """Append `n_pixels` [...] of frame `t` to each object's size list (only where `where`)."""
  n = jnp.asarray(n_pixels, jnp.int32)
  lead = state.count.shape
  where = jnp.ones(lead, bool) if where is None else jnp.broadcast_to(where, lead)
  slot = state.count % state.window
  write = (jnp.arange(state.window) == slot[..., None]) & where[..., None]
  t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), lead)
  return state.replace(
    sizes=jnp.where(write, jnp.broadcast_to(n, lead)[..., None], state.sizes),
    frames=jnp.where(write, t[..., None], state.frames),
    count=state.count + where.astype(jnp.int32),
  )


def recent_nonempty_sizes(state: DrmHistory, k: int = MEDIAN_OF) -> tuple[jax.Array, jax.Array]:
  """The newest `k` entries >= 1 in the ring, newest first: int32 [..., k] and valid [..., k]."""
  w = state.window
  k = min(k, w)
  age = (((state.count - 1) % w)[..., None] - jnp.arange(w)) % w  # 0 = newest entry
  ok = (age < state.count[..., None]) & (state.sizes >= 1)
  key = jnp.where(ok, -age, -(w + 1))
  top, idx = jax.lax.top_k(key, k)
  return jnp.take_along_axis(state.sizes, idx, axis=-1), top > -(w + 1)


def median_x2(values: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Twice the median of the valid entries of integer `values` [..., K] (exact: the sum of the
  two middle values, NumPy's even-count rule; 0 when none) and how many are valid."""
  big = jnp.iinfo(jnp.int32).max
  s = jnp.sort(jnp.where(valid, values.astype(jnp.int32), big), axis=-1)
  n = valid.sum(-1).astype(jnp.int32)
  lo = jnp.maximum((n - 1) // 2, 0)[..., None]
  hi = jnp.maximum(n // 2, 0)[..., None]
  pick = lambda i: jnp.where(n > 0, jnp.take_along_axis(s, i, axis=-1)[..., 0], 0)
  return pick(lo) + pick(hi), n


def masked_median(values: jax.Array, valid: jax.Array) -> jax.Array:
  """float32 median of the valid entries (NumPy's rule for an even count); NaN when none."""
  m2, n = median_x2(values, valid)
  return jnp.where(n > 0, m2.astype(jnp.float32) / 2, jnp.nan)


def _exact_fraction(x: float) -> tuple[int, int] | None:
  f = Fraction(repr(float(x)))
  return (f.numerator, f.denominator) if f.denominator <= _MAX_EXACT_DENOMINATOR else None


def _ratio_le(num, den, thr: float) -> jax.Array:
  """num / den <= thr for integer num, den > 0 (exact for small-denominator thresholds)."""
  frac = _exact_fraction(thr)
  if frac is None:
    return num.astype(jnp.float32) <= np.float32(thr) * den.astype(jnp.float32)
  p, q = frac
  return num * q <= p * den


def _ratio_ge(num, den, thr: float) -> jax.Array:
  frac = _exact_fraction(thr)
  if frac is None:
    return num.astype(jnp.float32) >= np.float32(thr) * den.astype(jnp.float32)
  p, q = frac
  return num * q >= p * den


def iou_ok(max_iou, threshold: float = IOU_MIN) -> jax.Array:
  """max predicted IoU [...] > threshold, the float32 value against the real threshold (the
  originals' float64 comparison: float32(0.8) passes `> 0.8`)."""
  cut = np.float32(threshold)
  if float(cut) <= threshold:  # the smallest float32 strictly above the threshold
    cut = np.nextafter(cut, np.float32(np.inf))
  return jnp.asarray(max_iou, jnp.float32) >= cut


def nonempty_ok(n_pixels) -> jax.Array:
  return jnp.asarray(n_pixels) >= 1


def spacing_ok(t, last_added, min_gap: int = MIN_GAP) -> jax.Array:
  """More than `min_gap` frames since the last admission, or none yet (last_added == -1)."""
  last_added = jnp.asarray(last_added, jnp.int32)
  return (jnp.asarray(t, jnp.int32) - last_added > min_gap) | (last_added == -1)


def area_ratio_ok(
  n_pixels,
  state: DrmHistory,
  ratio: tuple[float, float] = AREA_RATIO,
  median_of: int = MEDIAN_OF,
) -> jax.Array:
  """ratio[0] <= n / median <= ratio[1], with `state` ALREADY holding this frame's entry (the
  originals append before testing, so the frame is in its own median). False while the list
  has fewer than 2 entries, when n < 1, or when no entry is >= 1."""
  n = jnp.asarray(n_pixels, jnp.int32)
  m2, count = median_x2(*recent_nonempty_sizes(state, median_of))
  lo, hi = ratio
  twice_n = 2 * n  # n / (m2 / 2) = 2n / m2
  safe = jnp.maximum(m2, 1)
  in_range = _ratio_ge(twice_n, safe, lo) & _ratio_le(twice_n, safe, hi)
  return (state.count > 1) & (n >= 1) & (count > 0) & in_range


# ---- boxes and the distractor test ----


def mask_extent(mask: jax.Array) -> jax.Array:
  """bool [..., H, W] -> int32 [..., 4] (x_min, y_min, x_max, y_max) of the set pixels,
  inclusive; (0, 0, 0, 0) for an empty mask (as V raster.py:14-41)."""
  h, w = mask.shape[-2:]
  rows = mask.any(-1)
  cols = mask.any(-2)
  first = lambda a: jnp.argmax(a, axis=-1).astype(jnp.int32)
  box = jnp.stack(
    [first(cols), first(rows), w - 1 - first(cols[..., ::-1]), h - 1 - first(rows[..., ::-1])],
    axis=-1,
  )
  return jnp.where(rows.any(-1)[..., None], box, 0)


def vot_raster_bounds(extent: jax.Array, variant: str = "dam4sam") -> jax.Array:
  """Inclusive pixel bounds that V rasterizes for the box made from a mask extent: "dam4sam"
  (V's Mask -> Rectangle, width = x_max - x_min) drops the last column and row; "d4sm"
  (inclusive width) keeps the extent."""
  if check_variant(variant) == "d4sm":
    return extent
  return extent - jnp.asarray([0, 0, 1, 1], extent.dtype)


def _overlap_parts(a: jax.Array, b: jax.Array):
  """Intersection and union pixel counts of two inclusive-bounds boxes [..., 4], and whether
  V treats the pair as identical (union bounds at most one pixel wide or tall)."""
  ux0 = jnp.minimum(a[..., 0], b[..., 0])
  uy0 = jnp.minimum(a[..., 1], b[..., 1])
  ux1 = jnp.maximum(a[..., 2], b[..., 2])
  uy1 = jnp.maximum(a[..., 3], b[..., 3])
  same = (ux0 >= ux1) | (uy0 >= uy1)
  span = lambda lo, hi: jnp.maximum(hi - lo + 1, 0)
  area_a = span(a[..., 0], a[..., 2]) * span(a[..., 1], a[..., 3])
  area_b = span(b[..., 0], b[..., 2]) * span(b[..., 1], b[..., 3])
  iw = span(jnp.maximum(a[..., 0], b[..., 0]), jnp.minimum(a[..., 2], b[..., 2]))
  ih = span(jnp.maximum(a[..., 1], b[..., 1]), jnp.minimum(a[..., 3], b[..., 3]))
  inter = iw * ih
  return inter, area_a + area_b - inter, same


def vot_box_iou(bounds_a: jax.Array, bounds_b: jax.Array) -> jax.Array:
  """float32 IoU as V computes it for two rectangles given as inclusive pixel bounds."""
  inter, union, same = _overlap_parts(bounds_a, bounds_b)
  iou = inter.astype(jnp.float32) / jnp.maximum(union, 1).astype(jnp.float32)
  return jnp.where(same, 1.0, jnp.where(union > 0, iou, 0.0))


def _vot_box_iou_le(bounds_a: jax.Array, bounds_b: jax.Array, thr: float) -> jax.Array:
  inter, union, same = _overlap_parts(bounds_a, bounds_b)
  le = jnp.where(union > 0, _ratio_le(inter, jnp.maximum(union, 1), thr), 0.0 <= thr)
  return jnp.where(same, 1.0 <= thr, le)


def _largest_component_host(masks: np.ndarray) -> np.ndarray:
  import cv2

  masks = np.asarray(masks)
  flat = masks.reshape((-1,) + masks.shape[-2:])
  out = np.zeros(flat.shape, bool)
  for i, m in enumerate(flat):
    if not m.any():
      continue
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
      m.astype(np.uint8), connectivity=CC_CONNECTIVITY
    )
    out[i] = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
  return out.reshape(masks.shape)


def largest_component(masks: jax.Array) -> jax.Array:
  """bool [..., H, W] -> the largest 8-connected component of each mask (ties: OpenCV's
  lowest label); empty masks stay empty. Runs OpenCV on the host via jax.pure_callback."""
  masks = jnp.asarray(masks, bool)
  return jax.pure_callback(
    _largest_component_host,
    jax.ShapeDtypeStruct(masks.shape, jnp.bool_),
    masks,
    vmap_method="broadcast_all",
  )


def _distractor_parts(chosen: jax.Array, alts: jax.Array, variant: str):
  chosen = jnp.asarray(chosen, bool)
  rest = jnp.asarray(alts, bool) & ~chosen[..., None, :, :]
  kept = rest.any((-2, -1))  # [..., A]: alternatives with something outside the chosen mask
  union = largest_component(rest) | chosen[..., None, :, :]
  chosen_box = vot_raster_bounds(mask_extent(chosen), variant)[..., None, :]
  union_box = vot_raster_bounds(mask_extent(union), variant)
  return kept, chosen_box, union_box


def distractor_box_ious(chosen: jax.Array, alts: jax.Array, variant: str = "dam4sam") -> jax.Array:
  """float32 [..., A]: box IoU of (chosen OR largest component of alt AND NOT chosen) vs chosen
  for each alternative [..., A, H, W]; NaN where alt AND NOT chosen is empty (dropped)."""
  kept, chosen_box, union_box = _distractor_parts(chosen, alts, variant)
  return jnp.where(kept, vot_box_iou(chosen_box, union_box), jnp.nan)


def distractor_present(
  chosen: jax.Array,
  alts: jax.Array,
  max_box_iou: float = DISTRACTOR_BOX_IOU_MAX,
  variant: str = "dam4sam",
) -> jax.Array:
  """bool [...]: some kept alternative has box IoU <= max_box_iou (see distractor_box_ious);
  False when every alternative lies inside the chosen mask."""
  kept, chosen_box, union_box = _distractor_parts(chosen, alts, variant)
  return (kept & _vot_box_iou_le(chosen_box, union_box, max_box_iou)).any(-1)


def admit(
  state: DrmHistory,
  t,
  chosen_mask: jax.Array,
  alt_masks: jax.Array,
  max_iou: jax.Array,
  *,
  variant: str = "dam4sam",
  iou_min: float = IOU_MIN,
  area_ratio: tuple[float, float] = AREA_RATIO,
  median_of: int = MEDIAN_OF,
  min_gap: int = MIN_GAP,
  max_box_iou: float = DISTRACTOR_BOX_IOU_MAX,
) -> tuple[jax.Array, DrmHistory]:
  """One tracked frame t >= 1 for a batch of objects: chosen_mask bool [..., H, W] (video
  resolution, the argmax-IoU candidate after hole filling), alt_masks bool [..., A, H, W] (the
  other candidates), max_iou [...] -> (admitted bool [...], the updated history). The size is
  pushed every frame ("dam4sam") or only when the mask is non-empty ("d4sm"); last_added
  becomes t where admitted. Keyword options are trace-time constants."""
  check_variant(variant)
  chosen_mask = jnp.asarray(chosen_mask, bool)
  n = chosen_mask.sum((-2, -1), dtype=jnp.int32)
  push = None if variant == "dam4sam" else n >= 1
  state = push_size(state, t, n, where=push)
  first = (
    iou_ok(max_iou, iou_min)
    & nonempty_ok(n)
    & area_ratio_ok(n, state, area_ratio, median_of)
    & spacing_ok(t, state.last_added, min_gap)
  )
  # The host callback only runs on frames where some object passed the cheap tests.
  distractor = jax.lax.cond(
    first.any(),
    lambda: distractor_present(chosen_mask, alt_masks, max_box_iou, variant),
    lambda: jnp.zeros(first.shape, bool),
  )
  admitted = first & distractor
  t_b = jnp.broadcast_to(jnp.asarray(t, jnp.int32), admitted.shape)
  return admitted, state.replace(last_added=jnp.where(admitted, t_b, state.last_added))


# ---- DAM4SAM memory read (fixed shape over absolute-frame histories [..., T]) ----


def drm_read_frames(t, frame_is_drm: jax.Array, max_drm_read: int = MAX_DRM_READ) -> jax.Array:
  """int32 [..., max_drm_read]: the newest admitted frames in 1 .. t - 2, newest first, -1
  padded (the DRM read besides frame 0, which is always read). frame_is_drm [..., T] marks
  admitted frames by frame index; entry 0 is ignored."""
  idx = jnp.arange(frame_is_drm.shape[-1], dtype=jnp.int32)
  t = jnp.asarray(t, jnp.int32)[..., None]
  cand = frame_is_drm & (idx >= 1) & (idx < t - 1)
  return jax.lax.top_k(jnp.where(cand, idx, -1), max_drm_read)[0]


def ram_frames(
  t,
  frame_is_nonempty: jax.Array,
  frame_is_drm: jax.Array,
  stride: int = RAM_STRIDE,
  num_maskmem: int = NUM_MASKMEM,
  max_drm_read: int = MAX_DRM_READ,
) -> jax.Array:
  """int32 [..., num_maskmem - 1]: the RAM frames read at frame t, slot k (temporal encoding
  index k) first, -1 for an empty slot. frame_is_nonempty [..., T]: the low-res hole-filled
  mask of that frame was non-empty; frame_is_drm [..., T]: the frame was admitted. Slots past
  num_maskmem - 1 - (number of DRM frames read) are empty (see the module notes)."""
  idx = jnp.arange(frame_is_nonempty.shape[-1], dtype=jnp.int32)
  t = jnp.asarray(t, jnp.int32)[..., None]
  n_drm = (drm_read_frames(t[..., 0], frame_is_drm, max_drm_read) >= 0).sum(-1)
  n_slots = num_maskmem - 1 - n_drm
  newest = lambda ok: jnp.max(jnp.where(ok, idx, -1), axis=-1)
  base = frame_is_nonempty & (idx >= 1)
  prev = newest(base & (idx <= t - 1) & (~frame_is_drm | (idx == t - 1)))
  slots = [prev]
  on_stride = base & ~frame_is_drm & (idx % stride == 0)
  for _ in range(num_maskmem - 2):
    prev = newest(on_stride & (idx < prev[..., None]))
    slots.append(prev)
  out = jnp.stack(slots, axis=-1)
  return jnp.where(jnp.arange(num_maskmem - 1) < n_slots[..., None], out, -1)
