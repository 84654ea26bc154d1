"""Interactive video predictor with SAM 2's vocabulary (init_state, add_new_*, propagate_in_video).

Reproduces the reference's interactive predictor (`SAM2VideoPredictor_Plus`, eval mode, no
post-processing) for one task per predictor instance. Host bookkeeping only: the session state
(`state.py`), input checks (`inputs.py`), which memories a frame attends to (`layout.py`); the
per-frame math is `tracking.step.track_step`, called through `steps.py`.

* prompts on any frame are decoded at once ("temporary" outputs, no memory yet); a frame not
  tracked before is a *conditioning* frame decoded without memory, a frame already tracked is
  corrected with memory (and, for clicks, the frame's previous low-res logits clamped to
  [-32, 32] as the dense prompt) and stays a non-conditioning frame;
* `propagate_in_video` first consolidates: every temporary output gets its memory encoded from
  its low-res logits upsampled to SxS, then moves into the per-object output store; then each
  frame is tracked with memory attention over the selected conditioning frames, the
  num_maskmem-1 nearest tracked frames (in the tracking direction) and up to
  min(T, max_obj_ptrs)-1 object pointers (only past ones; signed offsets when reversed);
* per-task routing: mask task + mask -> the mask is the output; point task + Gaussian clicks ->
  the heatmap is the output; box / clicks / masks in the other combinations -> the decoder
  (multimask for 0..1 points, a box-only prompt counting as 0 points).

Objects are a batch axis: on each tracked frame, the objects whose memories sit on the same
frames run as one batch through one jitted step over a fixed-shape `MemoryBank`.
"""

from sam2pp_jax.tracking.predictor.state import InferenceState
from sam2pp_jax.tracking.predictor.video_predictor import VideoPredictor

__all__ = ["VideoPredictor", "InferenceState"]
