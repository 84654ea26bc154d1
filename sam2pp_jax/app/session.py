"""The app's UI-free core: one annotation session on one video, kept on disk.

`Session.open(checkpoint_dir, video_path, session_dir, *, task="mask", memory="sam2",
model_preset=None)` loads the model (cached per checkpoint at module level, the predictor per
(checkpoint, task, memory)), opens the video, and restores a saved session of the same video.
Every user-facing problem raises `AppError(ValueError)` with a one-line message (what, where,
what to do); the UI shows it. Anything else is a bug.

API (the UI codes against these names)
--------------------------------------
attributes: num_frames, video_hw (H, W), task, memory, obj_ids (objects holding a prompt, in
first-prompt order), frame_names, video_name, session_dir, propagated (results are up to date
with the prompts).
frame_rgb(t) -> uint8 [H,W,3]; render(t) -> uint8 [H,W,3] (results + this frame's prompts).
new_object() -> the next free id (1, 2, ...; reserved until used or the session is reopened).
add_click(t, obj, x, y, positive=True) / add_box(t, obj, x0, y0, x1, y1) / add_mask(t, obj,
mask) -> render(t). The prompt is decoded at once; the frame's result shows it. obj: an id from
new_object() or any 1..255 (a new id registers the object with its first prompt); x, y in video
pixels of frame t; mask: bool / uint8 [H,W] or an image path / array (nonzero = object; another
size is stretched to the frame with nearest-neighbour).
clear_frame_prompts(t, obj) -> render(t); remove_object(obj).
propagate(start=None, direction="both", progress=None): "forward" | "backward" | "both"
(forward first). Default start: forward from the earliest prompted frame, backward from the
latest one; an explicit start is used for both directions (with "both", a backward pass that
would start on the forward pass's start frame starts one frame earlier). progress(done, total)
after every frame (total = frames to track, both directions).
set_task(task), set_memory(name); export_zip(path) -> path; status() -> one line.
Extra: prompts(t) -> the event dicts (op, t, obj, ...) in force on frame t; result(t) ->
{"ids": uint8 [H,W] | None, "boxes": {obj: xyxy}, "points": {obj: (x, y, visible)}};
trail_frames (points trail length);
video_path, video_name, fps; export_zip(path, progress=None). Module level: load_model_cached,
auto_max_cached_frames. Session.open(..., max_cached_frames="auto") bounds the feature cache.

Semantics
---------
* Task mask: clicks / box / mask prompt a mask. Task box: a box (or clicks / a mask); results
  are the boxes (the masks are kept too and exported). Task point: a click places the tracked
  point (SAM 2++'s Gaussian-heatmap prompt, positive only; a new click on the same frame
  replaces it); boxes and masks are refused.
* Corrections, the SAM 2 way: a prompt on a frame the object was already tracked on is decoded
  with the memory (the predictor's correction path) and that frame is then never re-tracked:
  later propagations skip it in both directions and keep its outputs, for every object (SAM 2
  keeps a consolidated corrected frame the same way). So "correct frame t, then
  propagate(start=t)" re-tracks the frames after (and before) t from the correction. A new click
  on a frame the object was *prompted* on (a conditioning frame) after a propagation rebuilds
  the predictor from the prompt log instead, so the frame stays a conditioning frame.
  Memory policies that cannot take corrections (dam4sam, sam2long) refuse them (AppError).
* clear_frame_prompts rebuilds the predictor from the remaining prompts (features are cached, so
  this costs one decode per prompt); the frame's result then shows the remaining prompts, other
  frames keep their results until the next propagate (status says "stale").
* remove_object drops the object's prompts and its results on every frame (pixels it covered
  over another object become background until the next propagate).
* set_task clears every object (the predictor is per task; the old prompts are kept in
  session.json under "cleared" for reference). set_memory keeps the prompts and replays them into
  the new policy's predictor (refused, with the old policy kept, if the new one cannot take
  them, e.g. dam4sam with prompts on several frames); results become stale.
* Mutating calls (add_*, clear, remove, propagate, set_*, export) are exclusive per session: one
  made while another runs (e.g. a click during a propagation) raises AppError at once.
* On reopen the prompt log is replayed (a prompt that was a correction becomes a conditioning
  frame, as nothing is tracked yet) and the saved results are loaded unchanged; the saved task
  and memory win over the arguments (so a page reload never drops annotations).

Persistence layout (session_dir; every file written atomically)
--------------------------------------------------------------
session.json  {"format": 1, "video": {"path", "num_frames", "height", "width"}, "task",
              "memory", "objects", "events": [...], "corrected": [t...], "propagated",
              "result_frames": [t...], "cleared": [...]}; events are {"op": "click", "t", "obj",
              "x", "y", "positive"} | {"op": "box", "t", "obj", "box": [x0,y0,x1,y1]} |
              {"op": "mask", "t", "obj", "file": "prompts/<n>.png"} | {"op": "clear", "t",
              "obj"} | {"op": "remove", "obj"}, in the order they were made.
prompts/<n>.png   uploaded masks (0/255 grayscale PNG).
results/masks/<t:06d>.png   uint8 id map of frame t (grayscale PNG, pixel = object id).
results/tracks.json  {t: {obj: {"box": [4] | null, "point": [2] | null, "visible", "score"}}}.
A session_dir holding another video (other path, frame count or size) is refused.

Warm-up (latency of clicks)
---------------------------
XLA compiles the predictor's decoder once per input signature: per point count P of a frame's
clicks (padding points with label -1 is not an option: such a point is a real token in the SAM
decoder), with or without the previous mask as dense prompt, with or without memory (a
correction), with or without the memory position encoding (before / after the first propagation),
and the output post-processing once per object count O. On CPU each costs seconds (parity_small,
2 CPUs: 2.5-7 s), so the first click of each kind would wait for a compile.

`Session.open(..., warmup=True, warmup_points=WARMUP_POINTS)` therefore starts a daemon thread
after open, and again after each propagate, object-count change, set_task and set_memory, that
runs the session's own predictor methods (the exact call path, so jax's cache keys match) on
throwaway scratch states: clicks of 1..warmup_points points on a new conditioning frame and as
corrections on a tracked frame (the first one carries the tracked mask as dense prompt, as the
user's first correction does), the one-frame tracking step, a box (+ clicks) and a mask prompt,
and the output post-processing for O = objects + 0, 1, 2. Scratch states share nothing mutable
with the session (their own objects and their own feature dict holding frame 0's features for
frames 0..2; `images` is never read), so the thread takes no session lock and never changes the
session's state or results; jax's compile caches are thread-safe. Shapes warmed once (module
level, per predictor and video size) are skipped. One warm-up runs at a time per process: a newer
one (of any session, e.g. the next video the app opens) stops the older after its current step.
It pauses between steps while a session action runs (a click waits for at most the one compile
in flight; a propagation does not share the CPUs with the warm-up after that).
Not warmed: corrections of an object with 3+ conditioning frames (a wider conditioning bank), box
corrections, more than warmup_points points, propagation of several objects at once.
`wait_warm(timeout)` waits for the warm-up; `warm_errors` lists its failures (it never raises).
At exit the warm-up stops after its current compile (joined: XLA aborts the process if a thread
dies mid-compile). Tests pass warmup=False.

`enable_compile_cache()` (for the app's entry point; opt-out: SAM2PP_JAX_XLA_CACHE=off) also keeps
compiled executables on disk (~/.cache/sam2pp_jax/xla), so a restarted app loads them instead of
compiling.

Memory: frames stay on disk (`io.video.open_video`: decoded on demand, a few kept); results are
kept as PNG-encoded id maps (a few KB per frame), boxes and points as small dicts; the predictor
caches image features per frame (`Session.open(..., max_cached_frames="auto")`: as many as fit
FEATURE_BUDGET_BYTES, 4 GiB, e.g. ~3300 frames at 256 px, ~200 at 1024 px; least recently used
evicted and re-encoded when needed; None = no bound).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import json
import os
import threading
import time

import cv2
import numpy as np

from sam2pp_jax import checkpoint as ckpt_io
from sam2pp_jax.app import export as export_mod
from sam2pp_jax.app import render as render_mod
from sam2pp_jax.io import video as video_io
from sam2pp_jax.io.atomic import atomic_write_bytes, atomic_write_text
from sam2pp_jax.model.presets import PRESETS, TASKS
from sam2pp_jax.model.random_params import random_params
from sam2pp_jax.model.sam2pp import build_model
from sam2pp_jax.tracking.memory import POLICIES
from sam2pp_jax.tracking.outputs import ids_from_logits
from sam2pp_jax.tracking.predictor import VideoPredictor

FORMAT = 1
MAX_OBJ_ID = 255  # id maps are uint8
FEATURE_BUDGET_BYTES = 4 << 30  # max_cached_frames="auto": features of at most this many bytes
TRAIL_FRAMES = 10
WARMUP_POINTS = 4  # warm-up: point counts 1..K of a frame's clicks compiled ahead
COMPILE_CACHE_ENV = "SAM2PP_JAX_XLA_CACHE"  # folder of the persistent XLA cache; off / 0: none
COMPILE_CACHE_DIR = os.path.join("~", ".cache", "sam2pp_jax", "xla")

_MODELS: dict = {}  # (checkpoint abs path | "preset:<name>") -> (model, params)
_PREDICTORS: dict = {}  # (model key, task, memory, max_cached_frames) -> VideoPredictor
_STATES: dict = {}  # (model key, task, video path, T, size) -> a base state (images, features)
_MAX_CACHED_VIDEOS = 2
_WARMED: set = set()  # (predictor key, T, video_hw, job) warmed in this process
_WARM_THREADS: list = []  # live warm-up threads (joined at exit: XLA aborts if killed mid-compile)
_WARM_STOP = threading.Event()
_WARM_POS: dict = {}  # warm-up key -> a memory position encoding (for the "initp" scratch)
_WARM_LATEST: list = [0, None]  # [generation, thread]: one warm-up at a time, the latest wins


@atexit.register
def _stop_warmups():
  _WARM_STOP.set()
  for th in list(_WARM_THREADS):
    th.join(120)


class AppError(ValueError):
  """A user-facing problem; str(e) is one line saying what, where and what to do."""


def _one_line(msg) -> str:
  return " ".join(str(msg).split())


@contextlib.contextmanager
def _user_errors(prefix: str = ""):
  """ValueErrors of the loaders / predictor (they name the problem and a remedy) -> AppError."""
  try:
    yield
  except AppError:
    raise
  except ValueError as e:
    raise AppError(_one_line(prefix + str(e))) from None


# ------------------------------------------------------------------------------------- loading
def _open_video(path):
  """The video, lazily (io.video.open_video): handed to the predictor and read for display,
  frames decoded on demand."""
  with _user_errors():
    return video_io.open_video(path)


def _video_frame(video, t: int) -> np.ndarray:
  return np.asarray(video.frame(t))


def load_model_cached(checkpoint_dir=None, model_preset=None):
  """(key, model, params). checkpoint_dir: a saved checkpoint; without one, model_preset gives
  the preset with random weights (seed 0; benchmarks and tests only)."""
  if checkpoint_dir is not None:
    key = os.path.abspath(os.fspath(checkpoint_dir))
    if key not in _MODELS:
      if not os.path.isdir(key):
        raise AppError(
          f"checkpoint folder {key!r} does not exist; pass --checkpoint with a folder holding "
          "config.json and params (e.g. checkpoints/tiny)"
        )
      with _user_errors(f"cannot load checkpoint {key!r}: "):
        config, params = ckpt_io.load_model(key)
        model = build_model(config)
      _MODELS[key] = (model, params)
  else:
    if model_preset not in PRESETS:
      raise AppError(
        f"no checkpoint given and model_preset={model_preset!r}; pass a checkpoint folder "
        f"or one of the presets {', '.join(PRESETS)} (random weights)"
      )
    key = f"preset:{model_preset}"
    if key not in _MODELS:
      model = build_model(model_preset)
      _MODELS[key] = (model, random_params(model, 0))
  return (key, *_MODELS[key])


def auto_max_cached_frames(image_size: int) -> int:
  """Frames whose image features fit FEATURE_BUDGET_BYTES (about 20 * S^2 bytes per frame:
  vision + its position encoding at S/16 with 256 channels, the S/4 and S/8 high-res maps)."""
  return max(64, int(FEATURE_BUDGET_BYTES // (20 * int(image_size) ** 2)))


def enable_compile_cache(cache_dir=None, min_compile_secs: float = 0.5):
  """JAX's persistent compilation cache (the app only; benchmarks and tests leave it off): XLA
  executables that took >= min_compile_secs to compile are kept in cache_dir (default:
  $SAM2PP_JAX_XLA_CACHE, else ~/.cache/sam2pp_jax/xla), so a restarted app loads them instead of
  compiling again. SAM2PP_JAX_XLA_CACHE=off (or 0, none, empty) opts out. Returns the folder, or
  None when off or when the folder cannot be made (the app then just compiles)."""
  import jax

  if cache_dir is None:
    cache_dir = os.environ.get(COMPILE_CACHE_ENV, COMPILE_CACHE_DIR)
  if str(cache_dir).strip().lower() in ("", "0", "off", "none", "false", "no"):
    return None
  d = os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
  try:
    os.makedirs(d, exist_ok=True)
  except OSError:
    return None
  jax.config.update("jax_compilation_cache_dir", d)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return d


def _predictor(model_key, model, params, task, memory, max_cached_frames):
  if max_cached_frames == "auto":
    max_cached_frames = auto_max_cached_frames(model.config.image_size)
  k = (model_key, task, memory, max_cached_frames)
  if k not in _PREDICTORS:
    with _user_errors():
      _PREDICTORS[k] = VideoPredictor(
        model, params, task, memory=memory, max_cached_frames=max_cached_frames
      )
  return _PREDICTORS[k]


def _check_choice(name, value, choices):
  if value not in choices:
    raise AppError(f"{name} {value!r} is unknown; choose one of {', '.join(choices)}")


# ------------------------------------------------------------------------------------- results
class _Results:
  """Per-frame results: PNG-encoded uint8 id maps + boxes / points per object."""

  def __init__(self):
    self.ids: dict = {}  # t -> PNG bytes
    self.tracks: dict = {}  # t -> {obj: {"box", "point", "visible", "score"}}

  def frames(self) -> list:
    return sorted(set(self.ids) | set(self.tracks))

  def id_map(self, t):
    b = self.ids.get(t)
    if b is None:
      return None
    return cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)

  def set(self, t, obj_ids, logits, info, task):
    ids = ids_from_logits(logits, obj_ids) if task != "point" else None
    if ids is not None:
      self.ids[t] = cv2.imencode(".png", ids)[1].tobytes()
    score = np.asarray(info.get("object_score_logits", np.zeros(len(obj_ids))), np.float32)
    vis = np.asarray(info.get("visible", score > 0), bool)
    rec = {}
    for i, obj in enumerate(obj_ids):
      r = {"box": None, "point": None, "visible": bool(vis[i]), "score": float(score[i])}
      if "boxes_xyxy" in info:
        r["box"] = [float(v) for v in np.asarray(info["boxes_xyxy"])[i]]
      if "points_xy" in info:
        r["point"] = [float(v) for v in np.asarray(info["points_xy"])[i]]
      rec[int(obj)] = r
    self.tracks[t] = rec

  def drop_object(self, obj) -> list:
    """Remove obj everywhere; returns the frames whose id map changed."""
    changed = []
    for t in list(self.ids):
      m = self.id_map(t)
      if m is not None and (m == obj).any():
        m[m == obj] = 0
        self.ids[t] = cv2.imencode(".png", m)[1].tobytes()
        changed.append(t)
    for t in list(self.tracks):
      self.tracks[t].pop(int(obj), None)
    return changed


def _exclusive(fn):
  """One mutating call at a time per session (a UI may fire a click during a propagation, from
  another thread or from the progress callback): a second one gets an AppError at once instead
  of waiting or corrupting the state."""

  @functools.wraps(fn)
  def wrapper(self, *a, **k):
    if not self._lock.acquire(blocking=False):
      raise AppError(
        f"{fn.__name__.replace('_', ' ')} refused: {self._busy} is still running; wait for it "
        "to finish"
      )
    busy, self._busy = self._busy, fn.__name__.replace("_", " ")
    try:
      return fn(self, *a, **k)
    finally:
      self._busy = busy
      self._lock.release()

  return wrapper


# ------------------------------------------------------------------------------------- session
class Session:
  """One video's annotation session (module docstring)."""

  trail_frames = TRAIL_FRAMES

  @classmethod
  def open(
    cls,
    checkpoint_dir,
    video_path,
    session_dir,
    *,
    task: str = "mask",
    memory: str = "sam2",
    model_preset=None,
    max_cached_frames="auto",
    warmup: bool = True,
    warmup_points: int = WARMUP_POINTS,
  ) -> "Session":
    """warmup: compile the next clicks' shapes in a background thread (module docstring;
    warmup_points: their point counts 1..K)."""
    _check_choice("task", task, TASKS)
    _check_choice("memory policy", memory, tuple(POLICIES))
    if video_path is None:
      raise AppError("no video given; open a video file or a folder of frames first")
    model_key, model, params = load_model_cached(checkpoint_dir, model_preset)
    self = cls.__new__(cls)
    self._lock, self._busy = threading.Lock(), "another action"
    self._model_key, self._model, self._params = model_key, model, params
    self._max_cached = max_cached_frames
    self._warmup, self._warmup_points = bool(warmup), max(1, int(warmup_points))
    self._warm_thread, self._warm_keys, self.warm_errors = None, set(), []
    self.video_path = os.path.abspath(os.fspath(video_path))
    self._video = _open_video(self.video_path)
    v = self._video
    self.num_frames = int(v.num_frames)
    self.video_hw = (int(v.height), int(v.width))
    self.frame_names = [str(n) for n in v.frame_names]
    self.fps = getattr(v, "fps", None)
    base = os.path.basename(self.video_path.rstrip(os.sep))
    self.video_name = os.path.splitext(base)[0] if os.path.isfile(self.video_path) else base
    self.session_dir = os.path.abspath(os.fspath(session_dir))
    try:
      os.makedirs(os.path.join(self.session_dir, "results", "masks"), exist_ok=True)
      os.makedirs(os.path.join(self.session_dir, "prompts"), exist_ok=True)
    except OSError as e:
      raise AppError(
        f"cannot use session folder {self.session_dir!r} ({e.strerror or e}); choose another "
        "--session-dir"
      ) from None
    saved = self._read_saved()
    if saved is not None:
      task = saved.get("task", task)
      memory = saved.get("memory", memory)
    self.task, self.memory = task, memory
    self._events: list = []
    self._cleared: list = [] if saved is None else list(saved.get("cleared", []))
    self._reserved: set = set()
    self._corrected: set = set()
    self._tracked: set = set()  # frames tracked since the predictor state was (re)built
    self._results = _Results()
    self.propagated = False
    self._pred = _predictor(model_key, model, params, task, memory, max_cached_frames)
    self._state = self._new_state()
    if saved is not None:
      self._events = list(saved.get("events", []))
      self._rebuild()
      self._load_results(saved)
      self._corrected = {int(t) for t in saved.get("corrected", [])}
      self.propagated = bool(saved.get("propagated", False))
    self._save_json()
    self._start_warmup()
    return self

  # -- state ---------------------------------------------------------------------------------
  def _new_state(self):
    """An empty predictor state sharing the video's images and feature cache (one per video and
    task at module level, so rebuilds and reopened sessions never re-encode a frame)."""
    key = (self._model_key, self.task, self.video_path, self.num_frames, self.video_hw)
    base = _STATES.get(key)
    if base is None:
      with _user_errors():
        base = self._pred.init_state(self._video)
      while len(_STATES) >= _MAX_CACHED_VIDEOS:
        del _STATES[next(iter(_STATES))]
      _STATES[key] = base
    st = copy.copy(base)  # shares images and cached_features; fresh objects below
    st.obj_ids, st.objects, st.frame_info = [], [], {}
    return st

  # -- warm-up -------------------------------------------------------------------------------
  def _warm_plan(self, base):
    """(key, the tracking step, [(scenario, key, fn(scratch state))] still to run, the most
    likely next click first (module docstring); a scenario runs from its start up to its last
    step not yet warmed)."""
    p, k, t_total = self._pred, self._warmup_points, self.num_frames
    pkey = (self._model_key, self.task, self.memory, self._max_cached, t_total, self.video_hw)
    h, w = self.video_hw
    x, y = (w - 1) / 2.0, (h - 1) / 2.0
    nobj = len(base.obj_ids)
    point = self.task == "point"

    def click(f, n):
      def fn(st):
        if point:
          p.add_new_points_and_generate_gaussian_mask(st, f, 1, points=[[x, y]], labels=[1])
        else:
          xy = [[min(x + n, w - 1.0), y]]
          p.add_new_points_or_box(st, f, 1, points=xy, labels=[1], clear_old_points=False)

      return fn

    def track(st):
      click(0, 1)(st)
      for _ in p.propagate_in_video(st, start_frame_idx=0, max_frame_num_to_track=1):
        pass
      _WARM_POS[pkey] = st.maskmem_pos  # the memory position encoding (initp below)

    def objs(o):
      def fn(st):
        if not st.objects:
          click(0, 1)(st)
        out = st.objects[0].previous_output(0, True)
        p._frame_result(st, [out] + [None] * (o - 1))

      return fn

    def box(st):
      bx = [x - w / 4.0, y - h / 4.0, x + w / 4.0, y + h / 4.0]
      p.add_new_points_or_box(st, 0, 1, box=bx, clear_old_points=True)

    def mask(st):
      m = np.zeros((h, w), bool)
      m[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
      p.add_new_mask(st, 0, 1, m)

    corrections = (
      t_total > 1 and p.memory.corrections and p.memory.rows_per_object == 1 and not point
    )
    clicks = 1 if point else k  # the point task: one click per frame (a new one replaces it)
    # a click on a new conditioning frame passes the state's memory position encoding (None
    # before the first propagation) to the decoder, so both variants are compiled: "init" with
    # the session's, "initp" with the one the corrections' tracking made
    nopos = base.maskmem_pos is None
    inits = [("init", nopos)] + ([("initp", False)] if nopos and t_total > 1 else [])
    steps = [(sc, ("click", 1, f), click(0, 1)) for sc, f in inits[:1]]
    if clicks > 1:
      steps.append(("init", ("click", 2, nopos), click(0, 2)))
    steps += [("objs", ("objs", o), objs(o)) for o in sorted({max(nobj, 1), nobj + 1, nobj + 2})]
    if t_total > 1:
      steps.append(("corr", ("track",), track))
    for n in range(1, clicks + 1):
      if n > 2:
        steps.append(("init", ("click", n, nopos), click(0, n)))
      if corrections:
        steps.append(("corr", ("correct", n), click(1, n)))
      steps += [(sc, ("click", n, f), click(0, n)) for sc, f in inits[1:]]
    if not point:
      steps.append(("box", ("box", 2, nopos), box))
      steps += [("box", ("box", n, nopos), click(0, n)) for n in range(3, k + 1)]
      steps.append(("mask", ("mask",), mask))
    steps = [(sc, (*pkey, key), fn) for sc, key, fn in steps]
    last = {}
    for i, (sc, key, _) in enumerate(steps):
      if key not in _WARMED:
        last[sc] = i
    return pkey, track, [st for i, st in enumerate(steps) if i <= last.get(st[0], -1)]

  def _start_warmup(self):
    """Start (or restart, for the current predictor and object count) the background warm-up;
    nothing when it is off or every shape it would compile is warm already."""
    if not self._warmup:
      return
    base = self._state
    feats = base.cached_features.get(0)
    if feats is None:
      feats = next(iter(list(base.cached_features.values())), None)
    if feats is None:
      return
    pkey, track, plan = self._warm_plan(base)
    keys = {key for _, key, _ in plan}
    running = _WARM_LATEST[1]
    covered = running is not None and running is self._warm_thread and running.is_alive()
    if not keys or (covered and keys <= self._warm_keys):
      return  # nothing new to warm, or this session's running warm-up covers it
    self._warm_keys = keys
    tmpl = copy.copy(base)  # read here, under the caller's lock; scratch states copy it
    frames = range(min(3, self.num_frames))
    _WARM_LATEST[0] += 1  # supersedes any running warm-up (this session's or another's)
    gen, prev = _WARM_LATEST[0], _WARM_LATEST[1]

    def scratch(sc):
      st = copy.copy(tmpl)
      st.obj_ids, st.objects, st.frame_info = [], [], {}
      st.cached_features = {f: feats for f in frames}  # own dict: the session's is untouched
      if sc == "initp":  # the memory position encoding a propagation would have made
        if pkey not in _WARM_POS:
          track(scratch("track"))
        st.maskmem_pos = _WARM_POS[pkey]
      return st

    def run():
      if prev is not None:
        prev.join()
      states, broken = {}, set()
      for sc, key, fn in plan:
        while self._lock.locked() and not _WARM_STOP.is_set():  # a user action runs: let it
          time.sleep(0.02)  # have the CPUs (a propagation would otherwise share them)
        if _WARM_LATEST[0] != gen or _WARM_STOP.is_set():  # superseded, or exiting
          break
        if sc in broken:
          continue
        try:
          if sc not in states:
            states[sc] = scratch(sc)
          fn(states[sc])
          _WARMED.add(key)
        except Exception as e:  # noqa: BLE001 - the warm-up never fails the app
          broken.add(sc)
          self.warm_errors.append(f"warm-up {key[-1]}: {_one_line(e)}")

    def run_listed():
      try:
        run()
      finally:
        _WARM_THREADS.remove(th)

    th = threading.Thread(target=run_listed, name="sam2pp-warmup", daemon=True)
    self._warm_thread = _WARM_LATEST[1] = th
    _WARM_THREADS.append(th)
    th.start()

  def wait_warm(self, timeout=None) -> bool:
    """Wait (at most timeout s; None = no limit) for the background warm-up; True when none is
    running."""
    th = self._warm_thread
    if th is None:
      return True
    th.join(timeout)
    return not th.is_alive()

  @property
  def obj_ids(self) -> list:
    return [int(o) for o in self._state.obj_ids]

  def _effective_events(self, events=None) -> list:
    """The prompt events still in force (clear / remove drop the earlier ones they cover)."""
    out = []
    for e in self._events if events is None else events:
      if e["op"] == "clear":
        out = [x for x in out if not (x["t"] == e["t"] and x["obj"] == e["obj"])]
      elif e["op"] == "remove":
        out = [x for x in out if x["obj"] != e["obj"]]
      else:
        out.append(e)
    return out

  def _apply(self, e):
    """One prompt event into the predictor; returns (frame, obj_ids, logits)."""
    t, obj = int(e["t"]), int(e["obj"])
    p, st = self._pred, self._state
    with _user_errors(f"frame {t}, object {obj}: "):
      if e["op"] == "click":
        if self.task == "point":
          return p.add_new_points_and_generate_gaussian_mask(
            st, t, obj, points=[[e["x"], e["y"]]], labels=[1]
          )
        return p.add_new_points_or_box(
          st,
          t,
          obj,
          points=[[e["x"], e["y"]]],
          labels=[1 if e["positive"] else 0],
          clear_old_points=False,
        )
      if e["op"] == "box":
        return p.add_new_points_or_box(st, t, obj, box=e["box"], clear_old_points=True)
      if e["op"] == "mask":
        return p.add_new_mask(st, t, obj, self._read_prompt_mask(e["file"]))
    raise AppError(f"unknown event {e['op']!r} in session.json; delete the session folder")

  def _rebuild(self):
    """A fresh predictor state from the prompt log (features stay cached); results of the
    prompted frames are replaced by the replayed prompt outputs."""
    self._state = self._new_state()
    self._tracked = set()
    self._corrected = set()
    for e in self._effective_events():
      t, ids, logits = self._apply(e)
      self._results.set(t, ids, logits, self._state.frame_info.get(t, {}), self.task)

  def _check_frame(self, t) -> int:
    try:
      ti = int(t)
    except (TypeError, ValueError):
      raise AppError(
        f"frame index {t!r} is not a number; pick a frame 0..{self.num_frames - 1}"
      ) from None
    if not 0 <= ti < self.num_frames:
      raise AppError(
        f"frame {ti} is outside the video (frames 0..{self.num_frames - 1}); pick a frame inside it"
      )
    return ti

  def _check_obj(self, obj, allow_new: bool) -> int:
    try:
      o = int(obj)
    except (TypeError, ValueError):
      raise AppError(f"object id {obj!r} is not a number; use an id from new_object()") from None
    if o in self.obj_ids or (allow_new and o in self._reserved):
      return o
    if allow_new and 1 <= o <= MAX_OBJ_ID:
      return o
    known = ", ".join(map(str, self.obj_ids)) or "none"
    raise AppError(
      f"object id {o} is unknown (objects: {known}); pick an existing object or add one with "
      "'new object'"
    )

  def _check_xy(self, t, x, y, what="click"):
    h, w = self.video_hw
    try:
      x, y = float(x), float(y)
    except (TypeError, ValueError):
      raise AppError(
        f"{what} position ({x!r}, {y!r}) on frame {t} is not a pair of numbers"
      ) from None
    if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < w and 0 <= y < h):
      raise AppError(
        f"{what} at ({x:g}, {y:g}) on frame {t} is outside the {w}x{h} frame; click inside "
        "the image"
      )
    return x, y

  # -- display -------------------------------------------------------------------------------
  def frame_rgb(self, t) -> np.ndarray:
    t = self._check_frame(t)
    with _user_errors(f"frame {t}: "):
      return _video_frame(self._video, t)

  def prompts(self, t) -> list:
    """The prompts in force on frame t, per object: those after its last box / mask (the point
    task: its last click), as event dicts (op, t, obj, x, y, positive | box | file)."""
    t = self._check_frame(t)
    out: dict = {}
    for e in self._effective_events():
      if int(e["t"]) != t:
        continue
      resets = e["op"] in ("box", "mask") or self.task == "point"
      out[e["obj"]] = ([] if resets else out.get(e["obj"], [])) + [dict(e)]
    return [e for evs in out.values() for e in evs]

  def result(self, t) -> dict:
    t = self._check_frame(t)
    tr = self._results.tracks.get(t, {})
    return {
      "ids": self._results.id_map(t),
      "boxes": {o: r["box"] for o, r in tr.items() if r["box"] is not None},
      "points": {
        o: (r["point"][0], r["point"][1], r["visible"])
        for o, r in tr.items()
        if r["point"] is not None
      },
    }

  def render(self, t) -> np.ndarray:
    t = self._check_frame(t)
    res = self.result(t)
    clicks, boxes = [], []
    for e in self.prompts(t):
      if e["op"] == "click":
        clicks.append((e["x"], e["y"], bool(e.get("positive", True))))
      elif e["op"] == "box":
        boxes.append(tuple(e["box"]))
    trails = {}
    if self.task == "point":
      for obj in res["points"]:
        tr = []
        for s in range(max(0, t - self.trail_frames), t + 1):
          r = self._results.tracks.get(s, {}).get(obj)
          if r is not None and r["point"] is not None and r["visible"]:
            tr.append(tuple(r["point"]))
        trails[obj] = tr
    return render_mod.draw_overlay(
      self.frame_rgb(t),
      ids=res["ids"] if self.task == "mask" else None,
      boxes=res["boxes"] if self.task == "box" else None,
      points=res["points"] if self.task == "point" else None,
      trails=trails,
      clicks=clicks,
      box_prompts=boxes,
    )

  # -- prompts -------------------------------------------------------------------------------
  def new_object(self) -> int:
    used = set(self.obj_ids) | self._reserved
    o = 1
    while o in used:
      o += 1
    if o > MAX_OBJ_ID:
      raise AppError(f"at most {MAX_OBJ_ID} objects per session; remove one first")
    self._reserved.add(o)
    return o

  def _prompt(self, e) -> np.ndarray:
    t, obj = e["t"], e["obj"]
    known = obj in self.obj_ids
    if known and t in self._tracked and t not in self._corrected:
      prompted = any(x["t"] == t and x["obj"] == obj for x in self._effective_events())
      if prompted:  # more prompts on a conditioning frame after tracking: keep it conditioning
        self._events.append(e)
        try:
          self._rebuild()
        except AppError:
          self._events.pop()
          self._rebuild()
          raise
        self._after_prompt(t, obj, rebuilt=True)
        return self.render(t)
    _, ids, logits = self._apply(e)
    self._events.append(e)
    self._results.set(t, ids, logits, self._state.frame_info.get(t, {}), self.task)
    fo = self._pred.frame_output(self._state, t, obj)
    if fo is not None and not fo["is_cond"]:
      self._corrected.add(t)
    self._after_prompt(t, obj)
    return self.render(t)

  def _after_prompt(self, t, obj, rebuilt=False):
    self._start_warmup()  # a new object count: its post-processing shapes
    self._reserved.discard(obj)
    self.propagated = False
    self._save_frame(t)
    if rebuilt:
      for s in self._results.frames():
        self._save_frame(s)
    self._save_tracks()
    self._save_json()

  @_exclusive
  def add_click(self, t, obj_id, x, y, positive=True) -> np.ndarray:
    t = self._check_frame(t)
    obj = self._check_obj(obj_id, allow_new=True)
    x, y = self._check_xy(t, x, y)
    if self.task == "point" and not positive:
      raise AppError(
        "the point task takes positive clicks only (a click places the tracked point); "
        "click on the point to track"
      )
    return self._prompt(
      {"op": "click", "t": t, "obj": obj, "x": x, "y": y, "positive": bool(positive)}
    )

  @_exclusive
  def add_box(self, t, obj_id, x0, y0, x1, y1) -> np.ndarray:
    t = self._check_frame(t)
    obj = self._check_obj(obj_id, allow_new=True)
    if self.task == "point":
      raise AppError("the point task is prompted with a click, not a box; click on the point")
    h, w = self.video_hw
    try:
      b = [float(v) for v in (x0, y0, x1, y1)]
    except (TypeError, ValueError):
      raise AppError(
        f"box ({x0!r}, {y0!r}, {x1!r}, {y1!r}) on frame {t} is not 4 numbers"
      ) from None
    x0, x1 = sorted((b[0], b[2]))
    y0, y1 = sorted((b[1], b[3]))
    if not all(np.isfinite([x0, y0, x1, y1])) or x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
      raise AppError(
        f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) on frame {t} is outside the {w}x{h} frame; "
        "draw it on the image"
      )
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, w - 1.0), min(y1, h - 1.0)
    if x1 - x0 < 1 or y1 - y0 < 1:
      raise AppError(
        f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) on frame {t} is empty; drag a box around the object"
      )
    return self._prompt({"op": "box", "t": t, "obj": obj, "box": [x0, y0, x1, y1]})

  def _mask_array(self, mask, t, obj) -> np.ndarray:
    if isinstance(mask, (str, os.PathLike)):
      p = os.fspath(mask)
      img = cv2.imread(p, cv2.IMREAD_UNCHANGED) if os.path.isfile(p) else None
      if img is None:
        raise AppError(f"cannot read the mask image {p!r}; upload a PNG/JPEG (nonzero = object)")
      mask = img
    m = np.asarray(mask)
    if m.ndim == 3:
      m = m[..., :3].any(-1) if m.shape[-1] >= 3 else m.any(-1)
    if m.ndim != 2:
      raise AppError(f"mask for object {obj} on frame {t} has shape {m.shape}; give [H,W]")
    m = m != 0
    h, w = self.video_hw
    if m.shape != (h, w):  # an uploaded mask of another size: stretched to the frame
      m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    if not m.any():
      raise AppError(
        f"the mask for object {obj} on frame {t} is empty (no nonzero pixel); upload a mask "
        "with the object painted nonzero"
      )
    return m

  @_exclusive
  def add_mask(self, t, obj_id, mask) -> np.ndarray:
    t = self._check_frame(t)
    obj = self._check_obj(obj_id, allow_new=True)
    if self.task == "point":
      raise AppError("the point task is prompted with a click, not a mask; click on the point")
    m = self._mask_array(mask, t, obj)
    n = sum(1 for e in self._events if e["op"] == "mask")
    name = f"prompts/{n:05d}_t{t}_obj{obj}.png"
    atomic_write_bytes(
      os.path.join(self.session_dir, name), cv2.imencode(".png", m.astype(np.uint8) * 255)[1]
    )
    return self._prompt({"op": "mask", "t": t, "obj": obj, "file": name})

  def _read_prompt_mask(self, name) -> np.ndarray:
    m = cv2.imread(os.path.join(self.session_dir, name), cv2.IMREAD_GRAYSCALE)
    if m is None:
      raise AppError(
        f"the saved mask prompt {name!r} is missing from {self.session_dir!r}; delete the "
        "session folder or choose another --session-dir"
      )
    return m > 0

  @_exclusive
  def clear_frame_prompts(self, t, obj_id) -> np.ndarray:
    t = self._check_frame(t)
    obj = self._check_obj(obj_id, allow_new=False)
    if not any(e["t"] == t and e["obj"] == obj for e in self._effective_events()):
      raise AppError(f"object {obj} has no prompt on frame {t}; nothing to clear")
    self._events.append({"op": "clear", "t": t, "obj": obj})
    tr = self._results.tracks.get(t, {})
    tr.pop(obj, None)
    m = self._results.id_map(t)
    if m is not None:
      m[m == obj] = 0
      self._results.ids[t] = cv2.imencode(".png", m)[1].tobytes()
    self._rebuild()
    if obj not in self.obj_ids:  # its last prompt: the object is gone everywhere
      self._results.drop_object(obj)
    self._after_prompt(t, obj, rebuilt=True)
    return self.render(t)

  @_exclusive
  def remove_object(self, obj_id) -> None:
    obj = self._check_obj(obj_id, allow_new=False)
    with _user_errors():
      self._pred.remove_object(self._state, obj)
    self._events.append({"op": "remove", "obj": obj})
    changed = self._results.drop_object(obj)
    prompted = {e["t"] for e in self._effective_events()}
    self._corrected &= prompted
    for t in changed:
      self._save_frame(t)
    self._save_tracks()
    self._save_json()
    self._start_warmup()

  # -- tracking ------------------------------------------------------------------------------
  def _runs(self, start, stop, reverse):
    """Maximal runs of frames from start to stop (inclusive) not holding a correction."""
    step = -1 if reverse else 1
    runs, cur = [], []
    for f in range(start, stop + step, step):
      if f in self._corrected:
        if cur:
          runs.append(cur)
        cur = []
      else:
        cur.append(f)
    if cur:
      runs.append(cur)
    return runs

  @_exclusive
  def propagate(self, start=None, direction="both", progress=None) -> None:
    _check_choice("direction", direction, ("forward", "backward", "both"))
    effective = self._effective_events()
    if not effective or not self.obj_ids:
      raise AppError(
        "nothing to propagate: no object has a prompt yet; click on an object, draw a box or "
        "upload a mask first"
      )
    prompted = sorted({int(e["t"]) for e in effective})
    if start is not None:
      start = self._check_frame(start)
    plan = []  # (runs, reverse)
    if direction in ("forward", "both"):
      s = prompted[0] if start is None else start
      plan.append((self._runs(s, self.num_frames - 1, False), False))
    if direction in ("backward", "both"):
      s = prompted[-1] if start is None else start
      if plan and s == (prompted[0] if start is None else start):
        s -= 1  # the forward pass tracked the start frame already
      if s >= 0:
        plan.append((self._runs(s, 0, True), True))
    total = sum(len(r) for runs, _ in plan for r in runs)
    done = 0
    if progress is not None:
      progress(0, total)
    p, st = self._pred, self._state
    complete = False
    try:  # an interrupted run (an error, a cancelled progress callback) keeps what it tracked
      for runs, reverse in plan:
        for run in runs:
          a, n = run[0], len(run) - 1
          rev = reverse
          if reverse and a == 0:  # the predictor tracks nothing backwards from frame 0
            rev = False
          with _user_errors():
            for f, ids, logits, info in p.propagate_in_video(
              st, start_frame_idx=a, max_frame_num_to_track=n, reverse=rev, with_info=True
            ):
              self._results.set(int(f), ids, logits, info, self.task)
              self._tracked.add(int(f))
              self._save_frame(int(f))
              done += 1
              if progress is not None:
                progress(min(done, total), total)
      complete = True
    finally:
      self.propagated = complete
      self._save_tracks()
      self._save_json()
      self._start_warmup()
    if progress is not None and done < total:
      progress(total, total)

  # -- settings ------------------------------------------------------------------------------
  @_exclusive
  def set_task(self, task) -> None:
    _check_choice("task", task, TASKS)
    if task == self.task:
      return
    if self._events:
      self._cleared.append(
        {"task": self.task, "memory": self.memory, "events": self._events, "time": time.time()}
      )
    self.task = task
    self._pred = _predictor(
      self._model_key, self._model, self._params, task, self.memory, self._max_cached
    )
    self._events, self._reserved = [], set()
    self._results = _Results()
    self.propagated = False
    self._rebuild()
    self._wipe_results_dir()
    self._save_tracks()
    self._save_json()
    self._start_warmup()

  @_exclusive
  def set_memory(self, name) -> None:
    _check_choice("memory policy", name, tuple(POLICIES))
    if name == self.memory:
      return
    old_name, old_pred = self.memory, self._pred
    self._pred = _predictor(
      self._model_key, self._model, self._params, self.task, name, self._max_cached
    )
    self.memory = name
    try:
      self._rebuild()
    except AppError as e:
      self.memory, self._pred = old_name, old_pred
      self._rebuild()
      raise AppError(f"memory policy {name!r} cannot take this session's prompts: {e}") from None
    self.propagated = False
    self._save_json()
    self._start_warmup()

  # -- output --------------------------------------------------------------------------------
  @_exclusive
  def export_zip(self, path, progress=None) -> str:
    return export_mod.export_session(self, path, progress=progress)

  def status(self) -> str:
    prompted = sorted({int(e["t"]) for e in self._effective_events()})
    shown = ", ".join(map(str, prompted[:8])) + (", ..." if len(prompted) > 8 else "")
    res = len(self._results.frames())
    state = (
      "propagated" if self.propagated else ("stale" if res > len(prompted) else "not propagated")
    )
    return (
      f"{self.video_name}: {self.num_frames} frames {self.video_hw[1]}x{self.video_hw[0]} | "
      f"task {self.task}, memory {self.memory} | objects: {self.obj_ids or 'none'} | "
      f"prompted frames: {shown or 'none'} | results on {res}/{self.num_frames} frames "
      f"({state})"
    )

  # -- persistence ---------------------------------------------------------------------------
  def _json_path(self):
    return os.path.join(self.session_dir, "session.json")

  def _video_meta(self):
    h, w = self.video_hw
    return {"path": self.video_path, "num_frames": self.num_frames, "height": h, "width": w}

  def _read_saved(self):
    p = self._json_path()
    if not os.path.exists(p):
      return None
    try:
      with open(p, encoding="utf-8") as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise AppError(
        f"cannot read {p!r} ({_one_line(e)}); choose another --session-dir or delete it"
      ) from None
    sv = saved.get("video", {})
    if sv != self._video_meta():
      raise AppError(
        f"session folder {self.session_dir!r} holds a session of another video "
        f"({sv.get('path')!r}, {sv.get('num_frames')} frames, {sv.get('width')}x"
        f"{sv.get('height')}); choose another --session-dir or delete it"
      )
    if saved.get("format") != FORMAT:
      raise AppError(
        f"{p!r} has format {saved.get('format')!r} (this app reads {FORMAT}); choose another "
        "--session-dir or delete it"
      )
    return saved

  def _save_json(self):
    doc = {
      "format": FORMAT,
      "video": self._video_meta(),
      "task": self.task,
      "memory": self.memory,
      "objects": self.obj_ids,
      "events": self._events,
      "corrected": sorted(self._corrected),
      "propagated": self.propagated,
      "result_frames": sorted(self._results.ids),
      "cleared": self._cleared,
    }
    atomic_write_text(self._json_path(), json.dumps(doc, indent=1))

  def _mask_file(self, t):
    return os.path.join(self.session_dir, "results", "masks", f"{t:06d}.png")

  def _save_frame(self, t):
    b = self._results.ids.get(t)
    if b is not None:
      atomic_write_bytes(self._mask_file(t), b)

  def _save_tracks(self):
    doc = {str(t): {str(o): r for o, r in rec.items()} for t, rec in self._results.tracks.items()}
    atomic_write_text(os.path.join(self.session_dir, "results", "tracks.json"), json.dumps(doc))

  def _wipe_results_dir(self):
    d = os.path.join(self.session_dir, "results", "masks")
    for n in os.listdir(d):
      if n.endswith(".png"):
        os.unlink(os.path.join(d, n))

  def _load_results(self, saved):
    r = _Results()
    for t in saved.get("result_frames", []):
      p = self._mask_file(int(t))
      if os.path.exists(p):
        with open(p, "rb") as f:
          r.ids[int(t)] = f.read()
    tp = os.path.join(self.session_dir, "results", "tracks.json")
    if os.path.exists(tp):
      with open(tp, encoding="utf-8") as f:
        doc = json.load(f)
      r.tracks = {int(t): {int(o): v for o, v in rec.items()} for t, rec in doc.items()}
    self._results = r
