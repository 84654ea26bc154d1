"""`eval.py run`: track every sequence of a benchmark online from its protocol's prompts, write
predictions (and the ground truth) in the layouts the scorers read, then score. Resumable.

Layout under OUT: `pred/` (mask: `<seq>/<frame>.png`; box: `<seq>.txt`, the reference's integer
`x y w h` lines, plus the float boxes `<seq>_xyxy.npz`; point: `<seq>.npz`),
`gt/` (mask: `Annotations/<seq>/*.png`; box: `<seq>/groundtruth.txt` + labels + `list.txt`;
point: `<seq>.npz` + `Annotations/<seq>` when the dataset has masks) and
`scores_<protocol>.json`. Each sequence's prediction is written atomically, so its presence
means it is complete; a second run skips it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from sam2pp_jax.checkpoint import load_model
from sam2pp_jax.data.formats import open_dataset
from sam2pp_jax.eval.common import MetricInputError
from sam2pp_jax.eval.score import dumps, protocol_fn, score
from sam2pp_jax.io.atomic import atomic_write_text
from sam2pp_jax.io.video import preprocess
from sam2pp_jax.model.sam2pp import build_model
from sam2pp_jax.progress import Progress
from sam2pp_jax.tracking import outputs
from sam2pp_jax.tracking.memory import get_policy
from sam2pp_jax.tracking.propagate import track_video


class _ModelFrames:
  """Lazy [S,S,3] float32 model inputs of a sequence (decoded and resized on access)."""

  def __init__(self, seq, image_size: int):
    self.seq, self.s = seq, int(image_size)

  def __len__(self):
    return self.seq.num_frames

  def __getitem__(self, i):
    return preprocess(self.seq.frame(int(i))[None], self.s)[0]


def _paint(ids: np.ndarray, mask: np.ndarray, obj: int) -> None:
  """Add one object to an id map: where several objects claim a pixel the lowest id wins (the
  rule of `outputs.ids_from_logits`), independent of the order objects are added."""
  ids[mask & ((ids == 0) | (ids > obj))] = obj


def track_sequence(
  model, params, seq, task: str, *, chunk: int = 4, progress=None, memory="sam2"
) -> dict:
  """Online tracking of one sequence from all its prompt groups; arrays over the whole video.
  memory: the memory policy (a MemoryPolicy or a name)."""
  t_total, hw = seq.num_frames, seq.video_hw
  frames = _ModelFrames(seq, model.config.image_size)
  groups = seq.prompts(task)
  out = {}
  if task == "mask":
    max_id = max(max(g["obj_ids"]) for g in groups)
    if max_id > 255:
      raise ValueError(f"sequence {seq.name!r}: object id {max_id} does not fit a palette PNG")
    out["ids"] = np.zeros((t_total,) + tuple(hw), np.uint8)
  elif task == "box":
    out["boxes_xyxy"] = np.full((t_total, 4), np.nan, np.float32)
  else:
    n = seq.gt_points_xy.shape[1]
    out["trajs"] = np.full((t_total, n, 2), -1.0, np.float32)
    out["visibs"] = np.zeros((t_total, n), bool)
  done = 0
  for g in groups:
    f0 = int(g["frame"])
    r = track_video(
      model,
      params,
      frames,
      hw,
      task,
      g["prompt"],
      chunk=chunk,
      prompt_frame=f0,
      video_res=task == "mask",
      memory=memory,
      progress=None
      if progress is None
      else (lambda i, d=done, f0=f0: progress(d + min(i + 1, t_total - f0))),
    )
    done += t_total - f0
    idx = r["frame_idx"]
    if task == "mask":
      logits = r["video_res_mask_logits"]
      for k, obj in enumerate(g["obj_ids"]):
        for j, t in enumerate(idx):
          _paint(out["ids"][t], logits[j, k] > 0, int(obj))
    elif task == "box":
      out["boxes_xyxy"][idx] = r["pred_box_xyxy"][:, 0]
    else:
      sel = np.asarray(g["obj_ids"])
      out["trajs"][idx[:, None], sel[None, :]] = r["point_xy"].astype(np.float32)
      out["visibs"][idx[:, None], sel[None, :]] = r["visible"]
  return out


# ------------------------------------------------------------------------------ writing
def _pred_path(pred_root: str, task: str, name: str) -> str:
  return os.path.join(pred_root, name + {"mask": "", "box": ".txt", "point": ".npz"}[task])


def write_prediction(pred_root: str, task: str, seq, result: dict) -> str:
  path = _pred_path(pred_root, task, seq.name)
  if task == "mask":
    return outputs.write_mask_dir(path, seq.frame_names, (m for m in result["ids"]))
  if task == "box":  # <seq>_xyxy.npz (float), then <seq>.txt (the reference's ints)
    b = result["boxes_xyxy"]
    return outputs.write_box_results(path, b, np.isfinite(b).all(axis=1))[-1]
  h, w = seq.video_hw
  return outputs.write_points_npz(path, result["trajs"], result["visibs"], (w, h))


def write_ground_truth(gt_root: str, task: str, seq) -> None:
  """The sequence's ground truth in the layout the `task` scorers read (see module doc)."""
  h, w = seq.video_hw
  if task in ("mask", "point") and seq.annotated_mask_frames:
    frames = seq.annotated_mask_frames
    names = [seq.frame_names[i] for i in frames]
    maps = (np.clip(seq.gt_masks(i), 0, 255).astype(np.uint8) for i in frames)
    outputs.write_mask_dir(os.path.join(gt_root, "Annotations", seq.name), names, maps)
  if task == "box":
    d = os.path.join(gt_root, seq.name)
    os.makedirs(d, exist_ok=True)
    raw = np.where(np.isfinite(seq.raw_boxes_xywh), seq.raw_boxes_xywh, 0.0)
    vis = seq.gt_visible
    cover = seq.meta.get("cover")
    cover = (
      np.asarray(cover, int).reshape(-1)
      if cover is not None and len(cover) == len(vis)
      else np.where(vis, 8, 0)
    )
    atomic_write_text(os.path.join(d, "absence.label"), "".join(f"{int(not v)}\n" for v in vis))
    atomic_write_text(os.path.join(d, "cover.label"), "".join(f"{int(c)}\n" for c in cover))
    atomic_write_text(os.path.join(d, "cut_by_image.label"), "0\n" * len(vis))
    atomic_write_text(os.path.join(d, "meta_info.ini"), f"[METAINFO]\nresolution: ({w}, {h})\n")
    atomic_write_text(
      os.path.join(d, "groundtruth.txt"),
      "".join(",".join(repr(float(v)) for v in row) + "\n" for row in raw),
    )
  if task == "point":
    outputs.write_points_npz(
      os.path.join(gt_root, seq.name + ".npz"),
      seq.gt_points_xy.astype(np.float32),
      seq.gt_point_visible,
      (w, h),
    )


def _gt_done(gt_root: str, task: str, name: str) -> bool:
  if task == "mask":
    return os.path.isdir(os.path.join(gt_root, "Annotations", name))
  if task == "box":
    return os.path.isfile(os.path.join(gt_root, name, "groundtruth.txt"))
  return os.path.isfile(os.path.join(gt_root, name + ".npz"))


# ------------------------------------------------------------------------------ driver
def run_benchmark(
  checkpoint: str,
  dataset: str,
  root: str,
  task: str,
  out: str,
  *,
  split: Optional[str] = None,
  protocol: Optional[str] = None,
  chunk: int = 4,
  sequences: Optional[Sequence[str]] = None,
  quiet: bool = False,
  model_and_params=None,
  memory="sam2",
) -> dict:
  """Track, write and score a whole benchmark split; returns the score report. `memory`: the
  memory policy (a MemoryPolicy or a name); OUT/run.json records it, and a second run into
  the same OUT with another policy is refused (its predictions would be mixed)."""

  if chunk < 1:
    raise MetricInputError(f"--chunk {chunk}: give a chunk size >= 1")
  protocol, _ = protocol_fn(task, protocol)  # fail on a bad protocol before tracking
  ds = open_dataset(dataset, root, split=split, task=task)
  names = ds.sequence_names() if sequences is None else list(sequences)
  for n in names:
    if n not in ds.sequence_names():
      raise MetricInputError(f"{dataset} at {root!r}: no sequence {n!r}")
  if not names:
    raise MetricInputError(f"{dataset} at {root!r} (split {split!r}) has no sequences")
  out = os.path.abspath(out)
  pred_root, gt_root = os.path.join(out, "pred"), os.path.join(out, "gt")
  os.makedirs(pred_root, exist_ok=True)
  os.makedirs(gt_root, exist_ok=True)

  memory = get_policy(memory) if isinstance(memory, str) else memory
  run_info = {"memory": memory.name, "memory_options": memory.options()}
  info_path = os.path.join(out, "run.json")
  if os.path.exists(info_path):
    with open(info_path) as f:
      before = json.load(f)
    if before != json.loads(json.dumps(run_info)):
      raise MetricInputError(
        f"{out} holds predictions made with {before}, not {run_info}: give another --out "
        "(or delete it) to track with this memory policy"
      )
  else:
    atomic_write_text(info_path, json.dumps(run_info, indent=1) + "\n")
  todo = [n for n in names if not os.path.exists(_pred_path(pred_root, task, n))]
  if not quiet:
    print(
      f"{dataset}: {len(names)} sequences, {len(names) - len(todo)} already done", file=sys.stderr
    )
  model = params = None
  if todo:
    if model_and_params is not None:
      model, params = model_and_params
    else:
      config, params = load_model(checkpoint)
      model = build_model(config)
    try:
      memory.check_model(model.config)
    except ValueError as e:
      raise MetricInputError(f"--memory {memory.name}: {e}") from None
  seq_bar = None if quiet else Progress(len(names), "sequences", unit="seqs")
  for i, name in enumerate(names):
    seq = ds.sequence(name)
    if not _gt_done(gt_root, task, name):
      write_ground_truth(gt_root, task, seq)
    if name in todo:
      n_groups = len(seq.prompts(task))
      bar = None if quiet else Progress(seq.num_frames * n_groups, f"  {name[:20]:<20}")
      result = track_sequence(
        model,
        params,
        seq,
        task,
        chunk=chunk,
        progress=None if bar is None else bar.update,
        memory=memory,
      )
      if bar is not None:
        bar.update(seq.num_frames * n_groups)
      write_prediction(pred_root, task, seq, result)
    if seq_bar is not None:
      seq_bar.update(i + 1)
  if task == "box":
    atomic_write_text(os.path.join(gt_root, "list.txt"), "".join(n + "\n" for n in names))
  report = score(task, protocol, gt_root, pred_root, sequences=names)
  report["dataset"], report["split"] = dataset, split
  report.update(run_info)
  atomic_write_text(os.path.join(out, f"scores_{protocol}.json"), dumps(report) + "\n")
  return report
