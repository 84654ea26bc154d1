"""Block-by-block parity: recompute every frame0/* and frame1/* dump of a fixture.

Each block is fed the reference's own inputs where the fixture stores them (so an error is
attributed to the block that made it), and our own upstream results otherwise.
"""

from __future__ import annotations

import collections
import functools
import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sam2pp_jax.parity.fixture import Fixture, split_spot_check
from sam2pp_jax.parity.model_from_fixture import model_and_params
from sam2pp_jax.tracking import prompts

NEEDS_TRACKER = "needs the tracker"


@dataclass
class Row:
  name: str
  status: str  # "ok" | "FAIL" | NEEDS_TRACKER
  max_abs: float = float("nan")
  rel: float = float("nan")  # max_abs / max(1, max|ref|)
  tol: float = float("nan")
  note: str = ""

  def line(self) -> str:
    if self.status == NEEDS_TRACKER:
      return f"SKIP {self.name:58s} {NEEDS_TRACKER}: {self.note}"
    tag = "ok  " if self.status == "ok" else "FAIL"
    return (
      f"{tag} {self.name:58s} max_abs={self.max_abs:9.3g} rel={self.rel:9.3g} "
      f"tol={self.tol:8.3g} {self.note}"
    )


def _instance_lru(maxsize: int):
  """functools.lru_cache(maxsize) for a method, with the cache kept on the instance (so it goes away
  with it) instead of one module-wide cache keyed on self."""

  def deco(fn):
    attr = "_lru_" + fn.__name__

    @functools.wraps(fn)
    def wrapper(self, *args):
      cache = self.__dict__.setdefault(attr, collections.OrderedDict())
      if args in cache:
        cache.move_to_end(args)
        return cache[args]
      value = fn(self, *args)
      cache[args] = value
      if len(cache) > maxsize:
        cache.popitem(last=False)
      return value

    return wrapper

  return deco


def _nchw(x):
  x = np.asarray(x)
  return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def compare(name: str, got, ref, rel_tol: float) -> Row:
  ref = np.asarray(ref)
  got = np.asarray(got)
  if got.shape != ref.shape:
    return Row(name, "FAIL", note=f"shape {got.shape} != reference {ref.shape}")
  if ref.dtype == bool or np.issubdtype(ref.dtype, np.integer):
    same = np.array_equal(got.astype(ref.dtype), ref)
    return Row(
      name,
      "ok" if same else "FAIL",
      0.0 if same else 1.0,
      0.0 if same else 1.0,
      0.0,
      "exact" if same else f"got {got.tolist()} want {ref.tolist()}",
    )
  d = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
  scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
  tol = rel_tol * scale
  ok = d <= tol and np.all(np.isfinite(got))
  return Row(name, "ok" if ok else "FAIL", d, d / scale, tol)


class ComponentChecker:
  """Holds a fixture, its model and params, and jitted block functions."""

  def __init__(self, fx: Fixture, rel_tol: float = 2e-4, model=None, params=None):
    self.fx = fx
    self.rel_tol = rel_tol
    self.task = fx.task
    if model is None:
      model, params = model_and_params(fx)
    self.model, self.params = model, params
    self.S = fx.image_size
    self.hw = tuple(int(v) for v in fx["inputs/video_hw"])
    self.frames = fx.frames()
    self._apply = lambda fn, *a, **k: self.model.apply({"params": self.params}, *a, method=fn, **k)

  # -- jitted blocks -----------------------------------------------------------------------
  @functools.cached_property
  def _encode(self):
    return jax.jit(
      lambda p, x: self.model.apply({"params": p}, x, task=self.task, method="encode_image")
    )

  @_instance_lru(maxsize=4)
  def encoded(self, t: int) -> dict:
    x = jnp.asarray(self.frames[t].transpose(1, 2, 0)[None])
    return jax.tree.map(np.asarray, self._encode(self.params, x))

  def _run(self, fn, *args, **static):
    f = jax.jit(lambda p, *a: self.model.apply({"params": p}, *a, method=fn, **static))
    return jax.tree.map(lambda v: None if v is None else np.asarray(v), f(self.params, *args))

  # -- helpers -------------------------------------------------------------------------------
  def ref(self, name: str):
    return self.fx[name]

  def _prompt_points(self, t: int):
    """Points the reference's prompt encoder sees on frame t (from the user-level prompt)."""
    fx = self.fx
    if t == self._prompt_frame() and self.task == "box":
      pts, labels = prompts.box_to_points(fx["inputs/prompt_box_xyxy"], self.hw, self.S)
    elif t == self._prompt_frame() and self.task == "point":
      pts = prompts.to_model_coords(fx["inputs/prompt_point_xy"], self.hw, self.S)
      labels = np.asarray(fx["inputs/prompt_point_label"], np.int32).reshape(-1)
    else:
      pts, labels = np.zeros((1, 2), np.float32), -np.ones((1,), np.int32)
    return pts[None], labels[None]

  def _prompt_frame(self) -> int:
    call = str(self.fx.info.get("prompt_call", "")) or str(
      getattr(self.fx, "config", {}).get("prompt", "")
    )
    m = re.search(r"frame_idx=(\d+)", call)
    return int(m.group(1)) if m else 0

  def _model_res_prompt_mask(self):
    """The model-resolution mask input of the prompted frame (mask / point tasks)."""
    fx = self.fx
    if self.task == "mask":
      return prompts.mask_to_model_res(fx["inputs/prompt_mask"], self.S).astype(np.float32)
    p = prompts.to_model_coords(fx["inputs/prompt_point_xy"], self.hw, self.S)[0]
    r = int(fx["inputs/point_radius"]) if fx.has("inputs/point_radius") else 5
    s = float(fx["inputs/point_sigma"]) if fx.has("inputs/point_sigma") else 2.0
    return prompts.gaussian_point_mask(p[0], p[1], (self.S, self.S), r, s)

  def _fixture_model_res_mask(self):
    fx = self.fx
    if fx.has("inputs/mask_input_model_res"):
      return fx["inputs/mask_input_model_res"].astype(np.float32)
    return fx["inputs/point_gaussian_mask"].astype(np.float32)

  @_instance_lru(maxsize=2)
  def _mask_downsample(self, source: str):
    """mask_downsample of the prompt mask ("prompt") or the fixture's model-res mask ("fixture"),
    computed once per checker (several rows read it)."""
    m = self._model_res_prompt_mask() if source == "prompt" else self._fixture_model_res_mask()
    return self._run(lambda mdl, x: mdl.mask_downsample(x), jnp.asarray(m)[None, ..., None])

  # -- recipes -------------------------------------------------------------------------------
  def compute(self, t: int, comp: str, arr: str):
    """Our value for frame{t}/{comp}/{arr} in the reference layout, or (NEEDS_TRACKER, why)."""
    if comp == "image_encoder":
      e = self.encoded(t)
      if arr.startswith("backbone_fpn_"):
        lvl = int(arr.rsplit("_", 1)[1])
        return _nchw({0: e["fpn0"], 1: e["fpn1"], 2: e["vision"]}[lvl])
      if arr == "vision_pos_enc_2":
        return _nchw(e["vision_pos"])
    if comp == "forward_image":
      e = self.encoded(t)
      return (
        _nchw(e["s0"] if arr == "conv_s0_out" else e["s1"])
        if arr in ("conv_s0_out", "conv_s1_out")
        else None
      )
    if comp == "prompt_encoder":
      return self._prompt_encoder(t, arr)
    if comp == "mask_downsample" and arr == "out":
      return _nchw(self._mask_downsample("fixture"))
    if comp == "unified_decoder":
      return self._decoder(t, arr)
    if comp == "memory_encoder":
      return self._memory_encoder(t, arr)
    if comp == "memory_attention":
      return self._memory_attention(t, arr)
    return None

  def _prompt_encoder(self, t, arr):
    if arr == "in_point_coords":
      return self._prompt_points(t)[0]
    if arr == "in_point_labels":
      return self._prompt_points(t)[1]
    if arr == "in_masks":
      return _nchw(self._mask_downsample("prompt"))
    if arr not in ("sparse", "dense"):
      return None
    sparse, dense = self._prompt_encoded(t)
    return sparse if arr == "sparse" else _nchw(dense)

  @_instance_lru(maxsize=4)
  def _prompt_encoded(self, t):
    """(sparse, dense) prompt embeddings of frame t, once per frame."""
    fx = self.fx
    pre = f"frame{t}/prompt_encoder/"
    coords = (
      fx[pre + "in_point_coords"] if fx.has(pre + "in_point_coords") else self._prompt_points(t)[0]
    )
    labels = (
      fx[pre + "in_point_labels"] if fx.has(pre + "in_point_labels") else self._prompt_points(t)[1]
    )
    masks = fx[pre + "in_masks"].transpose(0, 2, 3, 1) if fx.has(pre + "in_masks") else None
    return self._run(
      lambda mdl, c, l, m: mdl.sam_prompt_encoder(c, l, None, m),
      jnp.asarray(coords),
      jnp.asarray(labels),
      None if masks is None else jnp.asarray(masks),
    )

  def _decoder_inputs(self, t):
    fx = self.fx
    pre = f"frame{t}/"
    pf = self._prompt_frame()
    if t == pf:
      if not fx.has(pre + "image_encoder/backbone_fpn_2"):
        return NEEDS_TRACKER, "frame features not stored"
      img = fx[pre + "image_encoder/backbone_fpn_2"].transpose(0, 2, 3, 1)
      if self.task == "box":
        img = img + np.asarray(self.params["no_mem_embed"])[0]
    else:
      if not fx.has(pre + "memory_attention/out"):
        return NEEDS_TRACKER, "memory-conditioned features not stored"
      img = fx[pre + "memory_attention/out"].transpose(0, 2, 3, 1)
    e = self.encoded(t)
    s0 = (
      fx[pre + "forward_image/conv_s0_out"].transpose(0, 2, 3, 1)
      if fx.has(pre + "forward_image/conv_s0_out")
      else e["s0"]
    )
    s1 = (
      fx[pre + "forward_image/conv_s1_out"].transpose(0, 2, 3, 1)
      if fx.has(pre + "forward_image/conv_s1_out")
      else e["s1"]
    )
    pe = pre + "prompt_encoder/"
    coords = (
      fx[pe + "in_point_coords"] if fx.has(pe + "in_point_coords") else self._prompt_points(t)[0]
    )
    labels = (
      fx[pe + "in_point_labels"] if fx.has(pe + "in_point_labels") else self._prompt_points(t)[1]
    )
    masks = fx[pe + "in_masks"].transpose(0, 2, 3, 1) if fx.has(pe + "in_masks") else None
    return img, s0, s1, coords, labels, masks

  def our_multimask(self, t) -> bool:
    """Our multimask rule: prompt-as-output frames decode single-mask; box prompts and all
    tracked frames use multimask (0..1 points; a box counts as no point)."""
    if t == self._prompt_frame():
      return self.task == "box"
    return True

  @_instance_lru(maxsize=4)
  def _decode(self, t):
    ins = self._decoder_inputs(t)
    if ins[0] is NEEDS_TRACKER:
      return ins
    img, s0, s1, coords, labels, masks = ins
    mm = (
      bool(self.fx[f"frame{t}/unified_decoder/multimask_output"])
      if self.fx.has(f"frame{t}/unified_decoder/multimask_output")
      else self.our_multimask(t)
    )

    def fn(mdl, img, s0, s1, c, l, m):
      sparse, dense = mdl.sam_prompt_encoder(c, l, None, m)
      return mdl.sam_unified_decoder(
        img,
        mdl.sam_prompt_encoder.get_dense_pe(),
        sparse,
        dense,
        (s0, s1),
        task=self.task,
        multimask_output=mm,
      )

    return self._run(
      fn, *(None if v is None else jnp.asarray(v) for v in (img, s0, s1, coords, labels, masks))
    )

  def _decoder(self, t, arr):
    if arr == "multimask_output":
      return np.asarray(self.our_multimask(t))
    out = self._decode(t)
    if isinstance(out, tuple):
      return out
    key = {
      "masks": "masks",
      "iou_pred": "iou_pred",
      "object_score_logits": "object_score_logits",
      "sam_tokens_out": "sam_tokens_out",
      "boxes_xyxy_norm": "boxes",
    }.get(arr)
    return None if key is None else out[key]

  def _low_res_logits(self, t):
    name = "outputs/low_res_mask_logits"
    return self.fx[name][t] if self.fx.has(name) else None

  def _memory_encoder(self, t, arr):
    out = self._memory_encoded(t)
    return out if isinstance(out, tuple) else out.get(arr)

  @_instance_lru(maxsize=4)
  def _memory_encoded(self, t):
    """Memory-encoder arrays of frame t (one run serves its three rows), or (NEEDS_TRACKER, why)."""
    fx = self.fx
    pre = f"frame{t}/"
    low = self._low_res_logits(t)
    if low is None or not fx.has(pre + "image_encoder/backbone_fpn_2"):
      return NEEDS_TRACKER, "full low-res logits / frame features not stored"
    vision = jnp.asarray(fx[pre + "image_encoder/backbone_fpn_2"].transpose(0, 2, 3, 1))
    score = jnp.asarray(np.asarray(fx["outputs/object_score_logits"][t], np.float32).reshape(1, 1))

    def fn(mdl, vision, low, score):
      high = mdl.upsample_to_image(low)
      c = mdl.config
      m = jax.nn.sigmoid(high) * c.sigmoid_scale_for_mem_enc + c.sigmoid_bias_for_mem_enc
      raw, pos = mdl._memory_encoder(self.task)(vision, m[..., None])
      feats, _ = mdl.encode_memory(vision, high, score, task=self.task)
      return raw, pos, feats

    raw, pos, feats = self._run(fn, vision, jnp.asarray(low)[None], score)
    return {
      "vision_features": _nchw(raw),
      "vision_pos_enc": _nchw(pos),
      "maskmem_features_f32": _nchw(feats),
    }

  @_instance_lru(maxsize=1)
  def _assembled_frame1_memory(self):
    """Memory tokens of frame 1 when frame 0 is the only (conditioning) frame, from outputs."""
    fx = self.fx
    need = ["outputs/maskmem_features_bf16", "outputs/maskmem_pos_enc", "outputs/obj_ptr"]
    if self._prompt_frame() != 0 or not all(fx.has(n) for n in need):
      return None
    c = self.model.config
    T = int(fx["outputs/obj_ptr"].shape[0])
    mem0 = fx["outputs/maskmem_features_bf16"][0]  # [Cm,h,w]
    pos0 = fx["outputs/maskmem_pos_enc"]  # [Cm,h,w]
    cm = mem0.shape[0]
    ptr = fx["outputs/obj_ptr"][0]  # [C]
    t_diff_max = min(T, c.max_obj_ptrs_in_encoder) - 1

    def fn(mdl, mem0, pos0, ptr):
      spatial = mem0.reshape(cm, -1).T
      spatial_pos = pos0.reshape(cm, -1).T + mdl.memory_time_encoding(c.num_maskmem - 1)
      ptr_tok = ptr.reshape(-1, cm)
      ptr_pos = jnp.repeat(
        mdl.obj_ptr_pos_encoding(jnp.array([1.0]), t_diff_max), ptr_tok.shape[0], axis=0
      )
      return (
        jnp.concatenate([spatial, ptr_tok])[:, None],
        jnp.concatenate([spatial_pos, ptr_pos])[:, None],
        ptr_tok.shape[0],
      )

    mem, pos, n = self._run(fn, jnp.asarray(mem0), jnp.asarray(pos0), jnp.asarray(ptr))
    return mem, pos, np.asarray(n, np.int64)

  def _memory_attention(self, t, arr):
    fx = self.fx
    pre = f"frame{t}/memory_attention/"
    assembled = self._assembled_frame1_memory() if t == 1 else None
    if arr in ("in_memory", "in_memory_pos", "num_obj_ptr_tokens"):
      if assembled is None:
        return NEEDS_TRACKER, "memory bank assembly beyond frame 1 is the tracker's"
      return dict(zip(("in_memory", "in_memory_pos", "num_obj_ptr_tokens"), assembled))[arr]
    if arr != "out":
      return None
    if fx.has(pre + "in_memory"):
      mem, pos = fx[pre + "in_memory"], fx[pre + "in_memory_pos"]
      n = int(fx[pre + "num_obj_ptr_tokens"])
    elif assembled is not None:
      mem, pos, n = assembled[0], assembled[1], int(assembled[2])
    else:
      return NEEDS_TRACKER, "memory tokens not stored"
    if not fx.has(f"frame{t}/image_encoder/backbone_fpn_2"):
      return NEEDS_TRACKER, "frame features not stored"
    vision = jnp.asarray(fx[f"frame{t}/image_encoder/backbone_fpn_2"].transpose(0, 2, 3, 1))
    e = self.encoded(t)
    mem = jnp.asarray(mem.transpose(1, 0, 2))
    pos = jnp.asarray(pos.transpose(1, 0, 2))
    out = self._run(
      lambda mdl, v, vp, m, mp: mdl.condition_on_memory(
        v, vp, m, mp, task=self.task, num_obj_ptr_tokens=n
      ),
      vision,
      jnp.asarray(e["vision_pos"]),
      mem,
      pos,
    )
    return _nchw(out)

  # -- driver --------------------------------------------------------------------------------
  def rows(self) -> list[Row]:
    out = []
    names = sorted(n for n in self.fx.arrays if re.match(r"^frame\d+/", n))
    for name in names:
      base, k = split_spot_check(name)
      frame, comp, arr = base.split("/", 2)
      t = int(frame[len("frame") :])
      try:
        got = self.compute(t, comp, arr)
      except Exception as e:  # a crash in one block is that block's failure, reported
        out.append(Row(name, "FAIL", note=f"error: {type(e).__name__}: {e}"))
        continue
      if got is None:
        out.append(Row(name, "FAIL", note="no recipe for this array (unknown component dump)"))
        continue
      if isinstance(got, tuple) and got and got[0] is NEEDS_TRACKER:
        out.append(Row(name, NEEDS_TRACKER, note=got[1]))
        continue
      got = np.asarray(got)
      if k:
        got = got[..., ::k, ::k]
      out.append(compare(name, got, self.fx[name], self.rel_tol))
    return out
