"""Per-block timing of one tracked frame (ours under jit; optionally the PyTorch reference).

    python bench/profile_frame.py --presets parity_small --repeats 20
    python bench/profile_frame.py --presets b+ --repeats 3 --task box
    SAM2PLUS_REPO=/path/to/SAM2-Plus python bench/profile_frame.py --reference
    python bench/profile_frame.py --smoke     # seconds: tiny preset, 1 timed call per block

Blocks (batch 1, random numpy-filled params, each block its own jitted function, timed after
one warm-up call as the best / median of `--repeats` calls, blocks interleaved round-robin so
every block sees similar machine load):

  trunk     Hiera trunk on the normalised S x S frame
  trunk:global / trunk:windowed
            Hiera's global-attention blocks / its windowed blocks, each block on the input it
            gets inside the trunk (captured once), one jitted function per group
  neck      FPN neck (lateral convs, top-down fusion, sine PEs) on the trunk outputs
  highres   the task's conv_s0 / conv_s1 projections of FPN levels 0 / 1
  memattn   memory attention of the S/16 features over 7 spatial memory frames + 16 object
            pointers (each split into mem_dim/hidden_dim... i.e. 4 tokens), all keys valid
  decoder   prompt encoder (no prompt) + unified decoder (multimask) + selection + obj ptr
            + upsample to S x S (= `sam_heads`)
  memenc    memory encoder (mask downsampler + fuser + projections) = `encode_memory`

With `--reference` (needs $SAM2PLUS_REPO and torch), the same blocks of the reference model
(built by bench/_reference.py and loaded with the same weights) are timed under
torch.inference_mode with `--threads` threads, and each block's ours/ref time ratio is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from _smoke import parse_args

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
SMOKE = {"presets": "tiny", "repeats": 1}  # --smoke defaults


def _timeit(fns: dict, repeats: int) -> dict:
  """fns: name -> zero-arg callable returning something to sync. Round-robin timing."""
  for f in fns.values():  # warm-up / compile
    f()
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      t0 = time.perf_counter()
      f()
      times[k].append(time.perf_counter() - t0)
  return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def jax_blocks(preset: str, task: str, seed: int = 0):
  """(callables, params, model) for our blocks."""
  import jax
  import jax.numpy as jnp

  from sam2pp_jax.model.fpn_neck import FpnNeck
  from sam2pp_jax.model.random_params import random_params
  from sam2pp_jax.model.sam2pp import SAM2Plus, build_model

  model = build_model(preset)
  params = random_params(model, seed)
  c = model.config
  s = int(c.image_size)
  d, m = int(c.hidden_dim), int(c.mem_dim)
  h = s // 16
  rng = np.random.default_rng(seed)
  img = jnp.asarray(rng.standard_normal((1, s, s, 3)), jnp.float32)

  # Sub-modules as standalone modules bound to their param subtrees.
  from sam2pp_jax.model.hiera import Hiera

  t = c.trunk
  trunk = Hiera(
    embed_dim=t.embed_dim,
    num_heads=t.num_heads,
    q_pool=t.q_pool,
    q_stride=tuple(t.q_stride),
    stages=tuple(t.stages),
    dim_mul=t.dim_mul,
    head_mul=t.head_mul,
    window_pos_embed_bkg_spatial_size=tuple(t.window_pos_embed_bkg_spatial_size),
    window_spec=tuple(t.window_spec),
    global_att_blocks=tuple(t.global_att_blocks),
  )
  trunk_params = params["image_encoder"]["trunk"]
  channels = tuple(trunk.channel_list)
  neck = FpnNeck(
    d_model=int(c.neck.d_model),
    backbone_channel_list=channels,
    fpn_interp_model=c.neck.fpn_interp_model,
    fpn_top_down_levels=tuple(c.neck.fpn_top_down_levels),
  )
  neck_params = params["image_encoder"]["neck"]

  f_trunk = jax.jit(lambda p, x: trunk.apply({"params": p}, x))
  f_neck = jax.jit(lambda p, xs: neck.apply({"params": p}, xs))
  f_enc = jax.jit(
    lambda p, x: model.apply({"params": p}, x, task=task, method=SAM2Plus.encode_image)
  )
  trunk_out = jax.block_until_ready(f_trunk(trunk_params, img))
  feats = jax.block_until_ready(f_enc(params, img))

  f_high = jax.jit(
    lambda p, a, b: model.apply(
      {"params": p},
      a,
      b,
      task,
      method=lambda mod, a, b, t: mod.sam_unified_decoder.project_high_res_features(a, b, t),
    )
  )

  nptr = int(c.max_obj_ptrs_in_encoder) * (d // m)
  nmem = int(c.num_maskmem) * h * h + nptr
  mem = jnp.asarray(rng.standard_normal((1, nmem, m)), jnp.float32)
  mem_pos = jnp.asarray(rng.standard_normal((1, nmem, m)), jnp.float32)
  mask = jnp.ones((1, nmem), bool)
  f_mattn = jax.jit(
    lambda p, v, vp, mm, mp, mk: model.apply(
      {"params": p},
      v,
      vp,
      mm,
      mp,
      mk,
      task=task,
      num_obj_ptr_tokens=nptr,
      method=SAM2Plus.condition_on_memory,
    )
  )
  f_dec = jax.jit(
    lambda p, v, s0, s1: model.apply(
      {"params": p}, v, s0, s1, task=task, multimask_output=True, method=SAM2Plus.sam_heads
    )
  )
  logits = jnp.asarray(rng.standard_normal((1, s, s)), jnp.float32)
  score = jnp.ones((1, 1), jnp.float32)
  f_menc = jax.jit(
    lambda p, v, lg, sc: model.apply(
      {"params": p}, v, lg, sc, task=task, method=SAM2Plus.encode_memory
    )
  )

  # Hiera's blocks by kind, each on the input it gets inside the trunk (captured once): the
  # global-attention blocks and the windowed ones, as one jitted function per group.
  from sam2pp_jax.model.hiera import MultiScaleBlock, PatchEmbed, bicubic_resize

  specs, _ = trunk._specs()
  x = PatchEmbed(trunk.embed_dim).apply({"params": trunk_params["patch_embed"]}, img)
  win, (ph, pw) = trunk.window_spec[0], x.shape[1:3]
  x = x + bicubic_resize(trunk_params["pos_embed"], (ph, pw))
  x = x + jnp.tile(trunk_params["pos_embed_window"], (1, ph // win, pw // win, 1))
  block_in, blocks = [], []
  for i, (dim, dim_out, heads, q_stride, window) in enumerate(specs):
    blk = MultiScaleBlock(dim, dim_out, heads, q_stride=q_stride, window_size=window)
    block_in.append(x)
    blocks.append(blk)
    x = jax.jit(blk.apply)({"params": trunk_params[f"blocks_{i}"]}, x)
  groups = {
    "trunk:global": [i for i, sp in enumerate(specs) if sp[4] == 0],  # (dim, .., window)
    "trunk:windowed": [i for i, sp in enumerate(specs) if sp[4] > 0],
  }

  def group_fn(idx):
    def run(p, xs):
      return [blocks[i].apply({"params": p[f"blocks_{i}"]}, xi) for i, xi in zip(idx, xs)]

    f = jax.jit(run)
    xs = [block_in[i] for i in idx]
    return lambda: jax.block_until_ready(f(trunk_params, xs))

  bur = jax.block_until_ready
  fns = {
    "trunk": lambda: bur(f_trunk(trunk_params, img)),
    **{k: group_fn(v) for k, v in groups.items()},
    "neck": lambda: bur(f_neck(neck_params, trunk_out)),
    "highres": lambda: bur(f_high(params, feats["fpn0"], feats["fpn1"])),
    "memattn": lambda: bur(
      f_mattn(params, feats["vision"], feats["vision_pos"], mem, mem_pos, mask)
    ),
    "decoder": lambda: bur(f_dec(params, feats["vision"], feats["s0"], feats["s1"])),
    "memenc": lambda: bur(f_menc(params, feats["vision"], logits, score)),
    "encode_image(all)": lambda: bur(f_enc(params, img)),
  }
  return fns, params, model


def torch_blocks(preset: str, task: str, params, model, threads: int):
  """Same blocks of the reference model (same weights)."""
  import _reference
  import jax
  import torch

  from sam2pp_jax.convert.key_map import flax_to_torch

  torch.set_num_threads(threads)
  pred = _reference.build_predictor(preset, task, threads=threads)
  sd = flax_to_torch(jax.tree.map(np.asarray, params), _reference.state_dict_shapes(pred))
  pred.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  pred.eval()
  c = model.config
  s = int(c.image_size)
  d, m = int(c.hidden_dim), int(c.mem_dim)
  h = s // 16
  rng = np.random.default_rng(0)
  img = torch.from_numpy(rng.standard_normal((1, 3, s, s)).astype(np.float32))
  enc = pred.image_encoder
  with torch.inference_mode():
    trunk_out = enc.trunk(img)
    bb = pred.forward_image(img)
  fns = {}
  im = torch.inference_mode

  def wrap(f):
    def g():
      with im():
        return f()

    return g

  fns["trunk"] = wrap(lambda: enc.trunk(img))
  tr = enc.trunk
  with torch.inference_mode():  # each block's input inside the trunk, captured once
    x = tr.patch_embed(img)
    x = x + tr._get_pos_embed(x.shape[1:3])
    block_in = []
    for blk in tr.blocks:
      block_in.append(x)
      x = blk(x)
  glob = [i for i, blk in enumerate(tr.blocks) if blk.window_size == 0]
  for name, idx in (
    ("trunk:global", glob),
    ("trunk:windowed", [i for i in range(len(tr.blocks)) if i not in glob]),
  ):
    fns[name] = wrap(lambda idx=idx: [tr.blocks[i](block_in[i]) for i in idx])
  fns["neck"] = wrap(lambda: enc.neck(trunk_out))
  fns["encode_image(all)"] = wrap(lambda: pred.forward_image(img))
  nptr = int(c.max_obj_ptrs_in_encoder) * (d // m)
  nmem = int(c.num_maskmem) * h * h + nptr
  mem = torch.from_numpy(rng.standard_normal((nmem, 1, m)).astype(np.float32))
  mem_pos = torch.from_numpy(rng.standard_normal((nmem, 1, m)).astype(np.float32))
  vis = bb["backbone_fpn"][-1].flatten(2).permute(2, 0, 1)
  vis_pos = bb["vision_pos_enc"][-1].flatten(2).permute(2, 0, 1)
  mattn = getattr(pred, f"memory_attention_{task}", None) or pred.memory_attention
  fns["memattn"] = wrap(
    lambda: mattn(
      curr=[vis], curr_pos=[vis_pos], memory=mem, memory_pos=mem_pos, num_obj_ptr_tokens=nptr
    )
  )
  s0, s1 = bb["backbone_fpn"][0], bb["backbone_fpn"][1]
  vis_nchw = bb["backbone_fpn"][-1]
  fns["decoder"] = wrap(
    lambda: pred._forward_sam_heads(vis_nchw, high_res_features=[s0, s1], multimask_output=True)
  )
  logits = torch.from_numpy(rng.standard_normal((1, 1, s, s)).astype(np.float32))
  score = torch.ones(1, 1)
  fns["memenc"] = wrap(
    lambda: pred._encode_new_memory(
      current_vision_feats=[vis],
      feat_sizes=[(h, h)],
      pred_masks_high_res=logits,
      object_score_logits=score,
      is_mask_from_pts=False,
    )
  )
  ok = {}
  for k, f in fns.items():
    try:
      f()
      ok[k] = f
    except Exception as e:  # noqa: BLE001
      print(f"reference block {k} unavailable: {type(e).__name__}: {e}")
  return ok, pred


def block_table(preset: str, task: str, repeats: int, reference: bool, threads: int = 2) -> dict:
  """{block: (best s, median s)} for ours and, with `reference`, "ref:"-prefixed the same blocks
  of the reference (timed after ours, not interleaved: XLA's and torch's thread pools fight)."""
  fns, params, model = jax_blocks(preset, task)
  res = _timeit(fns, repeats)
  if reference:
    import _reference

    ok, why = _reference.available()
    if not ok:
      print(f"reference: not timed ({why})")
    else:
      try:
        tfns, _ = torch_blocks(preset, task, params, model, threads)
        res.update({"ref:" + k: v for k, v in _timeit(tfns, repeats).items()})
      except Exception as e:  # noqa: BLE001
        print(f"reference blocks unavailable: {type(e).__name__}: {e}")
  return res


CORE = ("trunk", "neck", "highres", "memattn", "decoder", "memenc")


def print_block_table(preset: str, image_size: int, task: str, res: dict) -> None:
  print(f"== {preset} (S={image_size}, task={task}), ms best / median")
  for k, (b, med) in res.items():
    if k.startswith("ref:"):
      continue
    ref = res.get("ref:" + k)  # baseline in the same run, when the reference was timed
    ratio = f"  ref {1e3 * ref[0]:9.2f}  ours/ref {b / ref[0]:.2f}x" if ref else ""
    print(f"  {k:24s} {1e3 * b:9.2f} {1e3 * med:9.2f}{ratio}")
  for pre in ("", "ref:"):
    if all(pre + k in res for k in CORE):
      print(f"  {pre + 'sum(blocks)':24s} {1e3 * sum(res[pre + k][0] for k in CORE):9.2f}")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--presets", default="parity_small")
  ap.add_argument("--task", default="box")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--reference", action="store_true")
  ap.add_argument("--threads", type=int, default=2)
  args = parse_args(ap, argv, SMOKE)
  from sam2pp_jax.model.sam2pp import build_model

  for preset in args.presets.split(","):
    res = block_table(preset, args.task, args.repeats, args.reference, args.threads)
    print_block_table(preset, int(build_model(preset).config.image_size), args.task, res)


if __name__ == "__main__":
  main()
