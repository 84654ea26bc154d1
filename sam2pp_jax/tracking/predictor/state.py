"""What an interactive session holds: per-object prompts and outputs keyed by frame."""

from __future__ import annotations

import numpy as np


class ObjectState:
  """One object's prompts and outputs. Outputs are dicts: low_res [S/4,S/4] logits, score ()
  object score logit, obj_ptr [C], box [4] normalised (box task) or None, maskmem [HW,Cm]
  bfloat16 or None (not yet encoded)."""

  def __init__(self):
    self.point_inputs: dict = {}  # frame -> (coords [P,2] model px float32, labels [P] int32)
    self.mask_inputs: dict = {}  # frame -> [S,S] float32
    self.out = {"cond": {}, "non_cond": {}}
    self.temp = {"cond": {}, "non_cond": {}}
    self.tracked: dict = {}  # frame -> reverse flag of the pass that tracked it
    self.policy_state = None  # the memory policy's state after its latest step (batch 1)

  def status(self, f: int) -> tuple[bool, bool]:
    """(is a new conditioning frame, reverse flag of the pass that tracked it)."""
    if f in self.tracked:
      return False, bool(self.tracked[f])
    return True, False

  def previous_output(self, f: int, is_cond: bool):
    """The latest output on frame f (temporary first), or None."""
    key = "cond" if is_cond else "non_cond"
    for store in (self.temp[key], self.out["cond"], self.out["non_cond"]):
      if f in store:
        return store[f]
    return None

  def stored_output(self, f: int):
    """The consolidated output on frame f (conditioning first), or None."""
    return self.out["cond"].get(f, self.out["non_cond"].get(f))

  def merge_points(self, f: int, coords, labels, clear_old: bool):
    """New clicks appended to the frame's earlier ones unless clear_old."""
    if not clear_old and f in self.point_inputs:
      old_c, old_l = self.point_inputs[f]
      return np.concatenate([old_c, coords]), np.concatenate([old_l, labels])
    return coords, labels


class InferenceState:
  """Everything a predictor session holds for one video (SAM 2's `inference_state`)."""

  def __init__(self, images: np.ndarray, video_hw: tuple[int, int]):
    self.images = images  # float32 [T,S,S,3] normalised (an array, or a lazy io.video.ModelFrames)
    self.num_frames = int(images.shape[0])
    self.video_height, self.video_width = (int(v) for v in video_hw)
    self.cached_features: dict = {}  # frame -> {vision, vision_pos, s0, s1} [1,...]
    self.obj_ids: list = []
    self.objects: list[ObjectState] = []
    self.maskmem_pos = None  # [HW,Cm], the same for every memory
    self.frame_info: dict = {}  # frame -> extras of the latest output

  @property
  def video_hw(self) -> tuple[int, int]:
    return self.video_height, self.video_width

  def obj_idx(self, obj_id) -> int:
    return self.obj_ids.index(obj_id)

  def known_obj(self, obj_id) -> int:
    """Index of a tracked object; a clear error for an unknown id."""
    if obj_id not in self.obj_ids:
      raise ValueError(
        f"obj_id={obj_id!r} is not tracked in this session (known ids: "
        f"{self.obj_ids}); pass one of them"
      )
    return self.obj_idx(obj_id)

  def obj_or_new(self, obj_id) -> int:
    """Index of obj_id, registering a new object (allowed at any time, as the reference)."""
    if obj_id in self.obj_ids:
      return self.obj_idx(obj_id)
    self.obj_ids.append(obj_id)
    self.objects.append(ObjectState())
    return len(self.objects) - 1
