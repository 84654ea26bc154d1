"""`python -m sam2pp_jax.app`: serve the interactive tracker (ui.py) on a local port.

  python -m sam2pp_jax.app --checkpoint DIR [--video PATH] [--session-dir DIR]
                           [--port N] [--host H] [--task mask|box|point]
                           [--memory sam2|samurai|sam2long|dam4sam]

Open the printed URL in a browser. The session (video, objects, prompts, results) is kept in
--session-dir (default runs/app_session), so a page reload or a restart with the same directory
restores it. Bad arguments exit 2 with `python -m sam2pp_jax.app: error: ...`; a missing
gradio (an optional dependency: `pip install -e '.[app]'`) exits 2 with the install command.
Compiled steps are kept in JAX's persistent cache ($SAM2PP_JAX_XLA_CACHE, default
~/.cache/sam2pp_jax/xla; `off` disables it), and a background warm-up compiles the next clicks'
shapes after a video opens (sam2pp_jax/app/session.py, "Warm-up").
"""

import argparse
import os
import sys

from sam2pp_jax.app.session import enable_compile_cache
from sam2pp_jax.app.ui import MEMORIES, TASKS, build_app, launch

PROG = "python -m sam2pp_jax.app"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog=PROG,
    description="SAM 2++ interactive video tracker in the browser (Gradio).",
  )
  p.add_argument("--checkpoint", required=True, help="model checkpoint directory")
  p.add_argument("--video", default=None, help="video file or frame folder to open on load")
  p.add_argument(
    "--session-dir",
    default=os.path.join("runs", "app_session"),
    help="where the session is kept and restored from (default: runs/app_session)",
  )
  p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = a free one)")
  p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
  p.add_argument("--task", choices=TASKS, default="mask", help="a new session's task")
  p.add_argument("--memory", choices=MEMORIES, default="sam2", help="a new session's memory")
  p.add_argument("--model-preset", default=None, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if not os.path.isdir(a.checkpoint):
    p.error(f"--checkpoint {a.checkpoint}: no such directory")
  if not os.path.isfile(os.path.join(a.checkpoint, "config.json")):
    p.error(f"--checkpoint {a.checkpoint}: not a model checkpoint (no config.json in it)")
  if a.video is not None and not os.path.exists(a.video):
    p.error(f"--video {a.video}: no such file or folder")
  if not 0 <= a.port <= 65535:
    p.error(f"--port {a.port}: not in 0..65535")
  if os.path.exists(a.session_dir) and not os.path.isdir(a.session_dir):
    p.error(f"--session-dir {a.session_dir}: exists and is not a directory")
  try:
    import gradio  # noqa: F401
  except ImportError:
    p.error("gradio is not installed: pip install 'gradio>=5,<6' (or pip install -e '.[app]')")
  if a.port == 0:
    import socket

    with socket.socket() as s:
      s.bind((a.host, 0))
      a.port = s.getsockname()[1]
  return a


def main(argv=None) -> int:
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
  a = parse_args(argv)
  enable_compile_cache()  # restarts load compiled steps from disk ($SAM2PP_JAX_XLA_CACHE=off: no)
  demo = build_app(
    a.checkpoint,
    a.session_dir,
    a.video,
    task=a.task,
    memory=a.memory,
    model_preset=a.model_preset,
  )
  try:
    launch(demo, host=a.host, port=a.port, block=True)
  except OSError as e:  # port taken, bad host
    print(f"{PROG}: error: cannot serve on {a.host}:{a.port}: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
