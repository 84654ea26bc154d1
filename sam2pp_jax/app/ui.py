"""The web app's page: a Gradio Blocks UI over the app core (sam2pp_jax/app/session.py).

Why Gradio: Track Anything and SAM 2's own demos are built on it, so the interaction (click on a
frame, scrub, propagate, correct) is the one those users know; a click on a `gr.Image` arrives
in Python through `.select` as `gr.SelectData.index` = (x, y) in the displayed numpy image's
pixels (this page shows every frame at its original resolution, so those are video pixels);
`gr.Progress` gives a progress bar for propagation for free; and it runs headless on a CPU
machine with no network (the theme uses system fonts so the page fetches nothing from the
internet; analytics are off; share links are never made).

Gradio is an optional dependency (`pip install -e '.[app]'`): it is imported only inside this
module's functions and in `__main__.py`, so the rest of the package never needs it.

State: this is a local, single-user tool. The open `Session` lives server-side in the
module-level dict `_SESSIONS`, keyed by the absolute --session-dir; two browser tabs on one
server share (and edit) it. Each video gets its own core session folder,
`<session-dir>/videos/<name>-<hash of its path>/` (the core rewrites its session.json after
every edit), so reopening a video restores its annotations, and
`<session-dir>/last_video.json` names the video opened last. A page reload shows the open
session again; the first page load of a (re)started server opens --video if given, else the
last video, and the core restores its prompts and results from disk. Uploads are copied to
`<session-dir>/uploads/`, exports written to `<session-dir>/exports/`. Only the first corner of
a half-drawn box is per tab (a `gr.State`).

Page: video path / upload -> Open; frame slider; click mode (positive / negative click, or
"box": two clicks on opposite corners); object dropdown with "New object", "Remove object" and
"Clear this frame's prompts"; mask image upload -> "Add mask"; task (mask / box / point) and
memory policy (sam2 / samurai / sam2long / dam4sam); Propagate (both ways, forward or backward
from the shown frame) with a progress bar; Export -> a zip to download. Every user mistake shows
as a one-line message (a toast and the status line), never a stack trace; unexpected errors are
logged with their traceback on the server console and shown as one line.
"""

import logging
import os
import shutil
import threading
import time

import numpy as np

from sam2pp_jax.app import session as core_session
from sam2pp_jax.io.atomic import atomic_write_text

log = logging.getLogger("sam2pp_jax.app")

TASKS = ("mask", "box", "point")
MEMORIES = ("sam2", "samurai", "sam2long", "dam4sam")
CLICK_MODES = ("positive click", "negative click", "box (two corners)")
DIRECTIONS = ("both", "forward", "backward")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
DISPLAY_MIN = 640  # frames smaller than this on their long side are enlarged for display
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

_SESSIONS = {}  # abs session dir -> Session (single-user local tool; see the module docstring)
_LOCK = threading.RLock()  # one edit at a time per server
_HELP = (
  "**SAM 2++ video tracker.** 1) Open a video file or a folder of frames (path or upload). "
  "2) Pick an object, then click on it (positive / negative) or draw a box (two clicks on "
  "opposite corners), or upload a mask image. 3) Propagate. 4) Scrub to any frame, correct with "
  "more clicks and propagate again. 5) Export a zip of the results."
)


def _core():
  """The app core (sam2pp_jax.app.session)."""
  return core_session


def _user_error_types():
  return (_core().AppError,)


LAST_FILE = "last_video.json"  # <session-dir>/last_video.json: the video opened last


def video_session_dir(session_dir: str, video_path: str) -> str:
  """The core's session folder of one video: <session-dir>/videos/<name>-<hash of its path>, so
  each video keeps its own annotations and reopening a video restores them."""
  import hashlib

  path = os.path.abspath(video_path)
  name = os.path.splitext(os.path.basename(path.rstrip(os.sep)))[0] or "video"
  name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
  digest = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:8]
  return os.path.join(session_dir, "videos", f"{name}-{digest}")


def _remember_video(session_dir: str, video_path: str) -> None:
  import json

  atomic_write_text(os.path.join(session_dir, LAST_FILE), json.dumps({"video": video_path}))


def _last_video(session_dir: str):
  """The video opened last with this session dir (None when there is none or it is gone)."""
  import json

  try:
    with open(os.path.join(session_dir, LAST_FILE), encoding="utf-8") as f:
      v = json.load(f).get("video")
  except (OSError, ValueError, AttributeError):
    return None
  return v if isinstance(v, str) and os.path.exists(v) else None


def display_scale(hw) -> int:
  """The integer factor frames are enlarged by for display: small videos are shown at least
  DISPLAY_MIN pixels on their long side (nearest neighbour, so pixels stay sharp); a click's
  `SelectData.index` is divided by it to give video pixels."""
  return max(1, int(np.ceil(DISPLAY_MIN / max(int(hw[0]), int(hw[1]), 1))))


def _enlarge(img: np.ndarray, k: int) -> np.ndarray:
  return img if k == 1 else np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def _md(text: str) -> str:
  """text shown literally in the status Markdown (paths and names hold _ and *)."""
  return "".join("\\" + c if c in "\\`*_[]<>#|~" else c for c in str(text))


def _mark_corner(img: np.ndarray, x: int, y: int) -> np.ndarray:
  """A copy of img with a small cross at (x, y): the pending first corner of a box."""
  out = np.array(img, copy=True)
  h, w = out.shape[:2]
  r = max(2, min(h, w) // 40)
  color = np.array([255, 255, 0], np.uint8)
  out[max(0, y - r) : min(h, y + r + 1), min(max(x, 0), w - 1)] = color
  out[min(max(y, 0), h - 1), max(0, x - r) : min(w, x + r + 1)] = color
  return out


def _mask_from_image(img: np.ndarray, hw) -> np.ndarray:
  """A binary [H, W] mask from an uploaded image: any pixel brighter than 16 in some channel is
  the object (white-on-black masks, DAVIS palette PNGs and 0/255 PNGs all work); resized with
  nearest neighbour when it is not the video's size."""
  a = np.asarray(img)
  if a.ndim == 3:
    a = a[..., :3].max(-1) if a.shape[-1] >= 3 else a[..., 0]
  if a.ndim != 2:
    raise _core().AppError(f"the mask image has shape {np.shape(img)}; expected an image")
  m = a > 16
  h, w = int(hw[0]), int(hw[1])
  if m.shape != (h, w):
    import cv2

    m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
  return m


def _copy_uploads(files, session_dir: str) -> str:
  """Uploaded files -> a path Session.open reads, kept under <session-dir>/uploads so that a
  restored session still finds its frames after gradio's cache is cleared: one video file, or
  image files that become one frame folder (in name order)."""
  AppError = _core().AppError
  paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files]
  vids = [p for p in paths if p.lower().endswith(VIDEO_EXTS)]
  imgs = [p for p in paths if p.lower().endswith(IMAGE_EXTS)]
  if len(vids) + len(imgs) != len(paths) or (vids and (imgs or len(vids) > 1)):
    raise AppError(
      "upload one video file (" + ", ".join(VIDEO_EXTS) + ") or the frames of one video as "
      "image files (" + ", ".join(IMAGE_EXTS) + ")"
    )
  up = os.path.join(session_dir, "uploads")
  stamp = time.strftime("%Y%m%d-%H%M%S")
  if vids:
    stem, ext = os.path.splitext(os.path.basename(vids[0]))
    dst = os.path.join(up, f"{stem}-{stamp}{ext.lower()}")
    os.makedirs(up, exist_ok=True)
    shutil.copyfile(vids[0], dst)
    return dst
  stem = os.path.splitext(os.path.basename(sorted(imgs)[0]))[0]
  dst = os.path.join(up, f"frames-{stem}-{stamp}")
  os.makedirs(dst, exist_ok=True)
  for p in imgs:
    shutil.copyfile(p, os.path.join(dst, os.path.basename(p)))
  return dst


def build_app(
  checkpoint: str,
  session_dir: str,
  video=None,
  *,
  task: str = "mask",
  memory: str = "sam2",
  model_preset=None,
  title: str = "SAM 2++ (JAX) video tracker",
):
  """The Gradio Blocks of the app (not launched: see `launch`).

  checkpoint: the model checkpoint directory; session_dir: where the session is kept (created);
  video: a video file or frame folder opened on page load when session_dir holds no session;
  task / memory: the defaults of a new session; model_preset: passed to Session.open.
  """
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
  import gradio as gr

  checkpoint = os.path.abspath(checkpoint)
  session_dir = os.path.abspath(session_dir)
  os.makedirs(session_dir, exist_ok=True)

  # ---- helpers over the server-side session ---------------------------------------------
  def current():
    return _SESSIONS.get(session_dir)

  def need_session():
    s = current()
    if s is None:
      raise _core().AppError("open a video first (a path or an upload, then Open)")
    return s

  def clamp_frame(s, t) -> int:
    try:
      t = int(round(float(t)))
    except (TypeError, ValueError):
      t = 0
    return int(min(max(t, 0), s.num_frames - 1))

  def obj_choices(s, obj):
    """The objects with prompts, plus obj when it is a new one (from "New object")."""
    ids = [int(i) for i in s.obj_ids]
    if obj is not None and obj not in ids:
      ids.append(obj)
    return [(f"object {i}", i) for i in ids]

  def pick_obj(s, obj):
    """The chosen object id: the dropdown's (an object with prompts, or a new id), else the
    last object with prompts, else None."""
    try:
      obj = int(obj)
    except (TypeError, ValueError):
      obj = None
    if obj is not None and 1 <= obj <= 255:
      return obj
    ids = [int(i) for i in s.obj_ids]
    return ids[-1] if ids else None

  def status_text(s, msg=""):
    lines = []
    if msg:
      lines.append(msg)
    if s is not None:
      try:
        lines.append(_md(s.status()))
      except Exception as e:  # status must never break the page
        log.exception("status() failed")
        lines.append(f"(status unavailable: {type(e).__name__})")
    else:
      lines.append("No video open.")
    return "\n\n".join(lines)

  def view(s, t=0, obj=None, msg="", img=None):
    """Updates for every output component from the session's state."""
    if s is None:
      return {
        image: None,
        frame: gr.update(minimum=0, maximum=1, value=0),
        obj_dd: gr.update(choices=[], value=None),
        status: status_text(None, msg),
      }
    t = clamp_frame(s, t)
    obj = pick_obj(s, obj)
    img = s.render(t) if img is None else img
    return {
      image: _enlarge(img, display_scale(s.video_hw)),
      frame: gr.update(minimum=0, maximum=max(s.num_frames - 1, 1), value=t, step=1),
      obj_dd: gr.update(choices=obj_choices(s, obj), value=obj),
      task_r: gr.update(value=s.task),
      memory_dd: gr.update(value=s.memory),
      status: status_text(s, msg),
    }

  def guarded(fn=None, *, resync=True):
    """Run a handler under the lock; user errors -> toast + status line, never a trace.
    resync: the handler's outputs include the task and memory widgets, reset to the session's
    values on an error (a refused memory policy must not stay selected)."""
    import functools

    if fn is None:
      return functools.partial(guarded, resync=resync)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      with _LOCK:
        try:
          return fn(*args, **kwargs)
        except _user_error_types() as e:
          msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        except FileNotFoundError as e:
          msg = f"not found: {e.filename or e}"
        except Exception as e:
          log.exception("app handler %s failed", fn.__name__)
          first = str(e).strip().splitlines()[0] if str(e).strip() else ""
          msg = f"internal error ({type(e).__name__}{': ' + first if first else ''})"
        gr.Warning(msg)
        s = current()
        out = {status: status_text(s, f"**Error:** {_md(msg)}"), pending: None}
        if resync and s is not None:
          out[task_r] = gr.update(value=s.task)
          out[memory_dd] = gr.update(value=s.memory)
        return out

    return wrapper

  def open_session(path: str, task_v: str, memory_v: str):
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
      raise _core().AppError(f"no such video file or frame folder: {path}")
    s = _core().Session.open(
      checkpoint,
      path,
      video_session_dir(session_dir, path),
      task=task_v or task,
      memory=memory_v or memory,
      model_preset=model_preset,
    )
    _SESSIONS[session_dir] = s
    _remember_video(session_dir, path)
    return s

  # ---- handlers --------------------------------------------------------------------------
  @guarded
  def on_open(path_text, uploads, task_v, memory_v):
    path = (path_text or "").strip()
    if uploads:
      path = _copy_uploads(uploads, session_dir)
    if not path:
      raise _core().AppError("type a video file or frame folder path, or upload a video first")
    s = open_session(path, task_v, memory_v)
    out = view(s, 0, None, f"Opened `{s.video_path}`.")
    out[path_box] = s.video_path
    out[uploads_f] = None
    out[pending] = None
    return out

  @guarded
  def on_load():
    s = current()
    msg = ""
    if s is None:  # the first page load of this server: --video, else the last session
      last = _last_video(session_dir)
      if video:
        s = open_session(video, task, memory)
        msg = f"Opened `{s.video_path}`."
      elif last:
        s = open_session(last, task, memory)
        msg = f"Restored the last session (`{s.video_path}`)."
    else:
      msg = "Session restored."
    out = view(s, 0, None, msg)
    if s is not None:
      out[path_box] = s.video_path
    out[pending] = None
    return out

  @guarded(resync=False)
  def on_frame(t, obj):
    s = current()
    if s is None:
      return {}
    t = clamp_frame(s, t)
    return {
      image: _enlarge(s.render(t), display_scale(s.video_hw)),
      status: status_text(s, f"Frame {t}."),
      pending: None,
    }

  @guarded
  def on_select(t, obj, mode, pend, evt: gr.SelectData):
    s = need_session()
    t = clamp_frame(s, t)
    if evt is None or evt.index is None:
      raise _core().AppError("click inside the image")
    k = display_scale(s.video_hw)
    h, w = s.video_hw
    x, y = (int(v) // k for v in evt.index[:2])
    x, y = min(max(x, 0), w - 1), min(max(y, 0), h - 1)
    obj = pick_obj(s, obj)
    if obj is None:
      obj = int(s.new_object())
    if mode == CLICK_MODES[2]:
      if not pend or int(pend[0]) != t:
        img = _mark_corner(s.render(t), x, y)
        out = view(s, t, obj, f"Box: first corner ({x}, {y}); click the opposite corner.", img)
        out[pending] = (t, x, y)
        return out
      x0, y0 = int(pend[1]), int(pend[2])
      if x0 == x or y0 == y:
        raise _core().AppError("the two box corners must differ in both x and y")
      img = s.add_box(t, obj, min(x0, x), min(y0, y), max(x0, x), max(y0, y))
      out = view(s, t, obj, f"Box added to object {obj} on frame {t}.", img)
    else:
      positive = mode != CLICK_MODES[1]
      img = s.add_click(t, obj, x, y, positive=positive)
      kind = "positive" if positive else "negative"
      out = view(s, t, obj, f"{kind} click ({x}, {y}) on object {obj}, frame {t}.", img)
    out[pending] = None
    return out

  @guarded
  def on_new_object(t):
    s = need_session()
    obj = int(s.new_object())
    out = view(s, t, obj, f"New object {obj}: click on it.")
    out[pending] = None
    return out

  @guarded
  def on_remove_object(t, obj):
    s = need_session()
    obj = pick_obj(s, obj)
    if obj is None:
      raise _core().AppError("there is no object to remove")
    s.remove_object(obj)
    return view(s, t, None, f"Removed object {obj}.")

  @guarded
  def on_clear_frame(t, obj):
    s = need_session()
    obj = pick_obj(s, obj)
    if obj is None:
      raise _core().AppError("there is no object: click on the image to add one")
    t = clamp_frame(s, t)
    img = s.clear_frame_prompts(t, obj)
    return view(s, t, obj, f"Cleared object {obj}'s prompts on frame {t}.", img)

  @guarded
  def on_add_mask(mask_img, t, obj):
    s = need_session()
    if mask_img is None:
      raise _core().AppError("upload a mask image first (white / coloured object on black)")
    t = clamp_frame(s, t)
    m = _mask_from_image(mask_img, s.video_hw)
    if not m.any():
      raise _core().AppError("the mask image is empty (no pixel brighter than 16)")
    obj = pick_obj(s, obj)
    if obj is None:
      obj = int(s.new_object())
    img = s.add_mask(t, obj, m)
    return view(s, t, obj, f"Mask ({int(m.sum())} px) added to object {obj} on frame {t}.", img)

  @guarded
  def on_task(task_v, t, obj):
    s = current()
    if s is None or task_v == s.task:
      return {}
    s.set_task(task_v)
    return view(s, t, obj, f"Task: {task_v}.")

  @guarded
  def on_memory(memory_v, t, obj):
    s = current()
    if s is None or memory_v == s.memory:
      return {}
    s.set_memory(memory_v)
    return view(s, t, obj, f"Memory policy: {memory_v}.")

  @guarded
  def on_propagate(direction, t, obj, progress=gr.Progress()):  # noqa: B008 (gradio API)
    s = need_session()
    t = clamp_frame(s, t)
    progress((0, s.num_frames), desc="propagating")

    def report(done, total):
      progress((int(done), max(int(total), 1)), desc="propagating", unit="frames")

    t0 = time.time()
    if direction == "both":
      s.propagate(start=None, direction="both", progress=report)
    else:
      s.propagate(start=t, direction=direction, progress=report)
    dt = time.time() - t0
    return view(s, t, obj, f"Propagated ({direction}) in {dt:.1f} s.")

  @guarded(resync=False)
  def on_export(progress=gr.Progress()):  # noqa: B008 (gradio API)
    s = need_session()
    out_dir = os.path.join(session_dir, "exports")
    os.makedirs(out_dir, exist_ok=True)
    stem = getattr(s, "video_name", "") or "video"
    path = os.path.join(out_dir, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.zip")

    def report(done, total):
      progress((int(done), max(int(total), 1)), desc="exporting", unit="frames")

    path = s.export_zip(path, progress=report)
    return {
      export_f: gr.update(value=path, visible=True),
      status: status_text(s, f"Exported `{os.path.basename(path)}`: download it below."),
    }

  # ---- layout ----------------------------------------------------------------------------
  theme = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "monospace"],
  )
  with gr.Blocks(title=title, theme=theme, analytics_enabled=False) as demo:
    gr.Markdown(f"## {title}\n{_HELP}")
    with gr.Row():
      path_box = gr.Textbox(
        label="Video file or frame folder (path on the server)",
        value=os.path.abspath(video) if video else "",
        scale=4,
        elem_id="video-path",
      )
      uploads_f = gr.File(
        label="…or upload a video / frames",
        file_count="multiple",
        type="filepath",
        scale=2,
        height=150,
        elem_id="video-upload",
      )
      open_b = gr.Button("Open", variant="primary", scale=1, elem_id="open-btn")
    with gr.Row():
      with gr.Column(scale=3):
        image = gr.Image(
          label="Frame (click to prompt)",
          show_label=False,
          type="numpy",
          format="png",
          interactive=False,
          show_download_button=False,
          show_fullscreen_button=False,
          show_share_button=False,
          elem_id="frame-image",
        )
        frame = gr.Slider(0, 1, value=0, step=1, label="Frame", elem_id="frame-slider")
        status = gr.Markdown("No video open.", elem_id="status")
      with gr.Column(scale=2):
        click_r = gr.Radio(
          list(CLICK_MODES), value=CLICK_MODES[0], label="Click mode", elem_id="click-mode"
        )
        with gr.Row():
          obj_dd = gr.Dropdown(choices=[], value=None, label="Object", elem_id="object-id", scale=2)
          new_b = gr.Button("New object", elem_id="new-object-btn", scale=1)
        with gr.Row():
          remove_b = gr.Button("Remove object", variant="stop", elem_id="remove-object-btn")
          clear_b = gr.Button("Clear this frame's prompts", elem_id="clear-frame-btn")
        with gr.Row():
          task_r = gr.Radio(list(TASKS), value=task, label="Task", elem_id="task")
          memory_dd = gr.Dropdown(
            list(MEMORIES), value=memory, label="Memory policy", elem_id="memory"
          )
        with gr.Accordion("Prompt with a mask image", open=False):
          mask_img = gr.Image(
            label="Mask image (object bright on black)",
            type="numpy",
            sources=["upload"],
            elem_id="mask-upload",
          )
          mask_b = gr.Button("Add mask on this frame", elem_id="add-mask-btn")
        direction_r = gr.Radio(
          list(DIRECTIONS),
          value="both",
          label="Propagate (forward / backward start at the shown frame)",
          elem_id="direction",
        )
        prop_b = gr.Button("Propagate", variant="primary", elem_id="propagate-btn")
        export_b = gr.Button("Export zip", elem_id="export-btn")
        export_f = gr.File(label="Export", interactive=False, height=90, elem_id="export-file")
    pending = gr.State(None)  # the first corner (t, x, y) of a box being drawn (per tab)

    view_outs = [image, frame, obj_dd, task_r, memory_dd, status, pending]
    open_b.click(
      on_open, [path_box, uploads_f, task_r, memory_dd], view_outs + [path_box, uploads_f]
    )
    path_box.submit(
      on_open, [path_box, uploads_f, task_r, memory_dd], view_outs + [path_box, uploads_f]
    )
    demo.load(on_load, None, view_outs + [path_box])
    frame.change(on_frame, [frame, obj_dd], [image, status, pending], show_progress="hidden")
    image.select(on_select, [frame, obj_dd, click_r, pending], view_outs)
    new_b.click(on_new_object, [frame], view_outs)
    remove_b.click(on_remove_object, [frame, obj_dd], view_outs)
    clear_b.click(on_clear_frame, [frame, obj_dd], view_outs)
    mask_b.click(on_add_mask, [mask_img, frame, obj_dd], view_outs)
    task_r.input(on_task, [task_r, frame, obj_dd], view_outs)
    memory_dd.input(on_memory, [memory_dd, frame, obj_dd], view_outs)
    prop_b.click(on_propagate, [direction_r, frame, obj_dd], view_outs)
    export_b.click(on_export, None, [export_f, status, pending])
  demo.queue(default_concurrency_limit=1)
  demo._sam2pp_session_dir = session_dir
  return demo


def launch(demo, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True, quiet=False):
  """Serve `demo` (from build_app) locally: no share link, no SSR, the session dir's files
  (exports) allowed for download. Returns the local URL when block is False."""
  session_dir = getattr(demo, "_sam2pp_session_dir", None)
  _, url, _ = demo.launch(
    server_name=host,
    server_port=int(port),
    share=False,
    inbrowser=False,
    prevent_thread_lock=True,
    allowed_paths=[session_dir] if session_dir else None,
    show_api=False,
    ssr_mode=False,
    quiet=True,
  )
  if not quiet:
    print(f"sam2pp_jax.app: serving on {url}", flush=True)
  if block:
    try:
      demo.block_thread()
    except KeyboardInterrupt:
      pass
  return url
