"""The web app (issue 19) driven in a real headless Chromium, end to end.

`python -m sam2pp_jax.app` serves checkpoints/tiny on a free port over a synthetic video (a JPEG
frame folder plus its ground truth in the davis2017 layout). In the browser: a nonexistent path
shows a message, propagating before any prompt shows a message, open the video, draw a box on
the object (box mode, two clicks on its ground-truth box's corners) and click on it (its
ground-truth mask's centroid; clicks are scaled to the image element's box), propagate, scrub
to a later frame, add a correction click, add a second object from an uploaded mask image and
remove it again, propagate again, export and download the zip, reload
the page (the object and its prompts are still listed), and restart the server on the same
--session-dir (restored from disk). The zip's masks are scored with
`sam2pp_jax.eval.score.score("mask", "davis2017", ...)`: a finite J&F, one mask per frame, and
the clicked object overlaps its ground truth on the clicked frames.

Set SAM2PP_APP_SCREENSHOTS=1 to write the screenshots docs/app/*.png at the key steps.
Skipped (with the reason) without /usr/bin/chromium, playwright or gradio.
`test_cli_refuses_bad_arguments` checks the command line's one-line errors (no browser).
"""

import importlib.util
import math
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile

import cv2
import numpy as np
import pytest
from conftest import train_env

from sam2pp_jax.data.synthetic import generate_video
from sam2pp_jax.io.png import read_palette_png, save_palette_png

REPO = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
]
SEQ = "synth"
NUM_FRAMES, HEIGHT, WIDTH = 12, 64, 96
CORRECTION_FRAME = 8
SCREENSHOTS = os.environ.get("SAM2PP_APP_SCREENSHOTS") == "1"
SHOT_DIR = REPO / "docs" / "app"
ALLOWED_OUTSIDE = ("https://cdnjs.cloudflare.com/ajax/libs/iframe-resizer/",)
UI_TIMEOUT_MS = 120_000  # one browser step (the first one compiles the model)

_missing = [m for m in ("playwright", "gradio") if importlib.util.find_spec(m) is None]
_NO_CHROMIUM = f"{CHROMIUM} is absent (apt-get install chromium)"
_NO_PACKAGES = f"{', '.join(_missing)} not importable (pip install -e '.[app,test]')"
if os.environ.get("SAM2PP_REQUIRE_BROWSER") == "1":  # CI (.ci/run): a missing browser fails
  if not os.path.exists(CHROMIUM) or _missing:
    raise RuntimeError(
      "SAM2PP_REQUIRE_BROWSER=1 but "
      + "; ".join(
        r
        for bad, r in ((not os.path.exists(CHROMIUM), _NO_CHROMIUM), (_missing, _NO_PACKAGES))
        if bad
      )
    )
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=_NO_CHROMIUM)
needs_packages = pytest.mark.skipif(bool(_missing), reason=_NO_PACKAGES)


def _server_cmd(checkpoint, session_dir, port):
  return [
    sys.executable,
    "-m",
    "sam2pp_jax.app",
    "--checkpoint",
    str(checkpoint),
    "--session-dir",
    str(session_dir),
    "--port",
    str(port),
    "--host",
    "127.0.0.1",
  ]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """The app as a subprocess; its output goes to a log file shown when a step fails."""

  def __init__(self, session_dir, log_path):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}/"
    self.log_path = log_path
    # the suite's XLA flags minus its 8 fake host devices (those are not the app's)
    env = dict(train_env(), GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    # the restarted server reuses the first one's compiled programs
    env["SAM2PP_JAX_XLA_CACHE"] = str(pathlib.Path(log_path).parent / "jax_cache")
    self.log = open(log_path, "a")
    self.proc = subprocess.Popen(
      _server_cmd(REPO / "checkpoints" / "tiny", session_dir, self.port),
      cwd=REPO,
      env=env,
      stdout=self.log,
      stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 90
    while True:
      if self.proc.poll() is not None:
        raise AssertionError(f"the app exited with {self.proc.returncode}:\n{self.tail()}")
      try:
        with urllib.request.urlopen(self.url, timeout=2) as r:
          if r.status == 200:
            return
      except OSError:
        pass
      if time.time() > deadline:
        self.stop()
        raise AssertionError(f"the app did not answer on {self.url} in 90 s:\n{self.tail()}")
      time.sleep(0.3)

  def tail(self, n=4000) -> str:
    if not self.log.closed:
      self.log.flush()
    return pathlib.Path(self.log_path).read_text(errors="replace")[-n:]

  def stop(self):
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(10)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait(10)
    self.log.close()


def _write_video(root: pathlib.Path, seed=3):
  """Frames (JPEG folder) and the davis2017 ground truth (gt/Annotations/<seq>/*.png)."""
  v = generate_video(seed, num_frames=NUM_FRAMES, height=HEIGHT, width=WIDTH, num_objects=1)
  vd = root / "videos" / SEQ
  ad = root / "gt" / "Annotations" / SEQ
  vd.mkdir(parents=True)
  ad.mkdir(parents=True)
  for t, f in enumerate(v["frames"]):
    cv2.imwrite(str(vd / f"{t:05d}.jpg"), f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    save_palette_png(str(ad / f"{t:05d}.png"), v["masks"][t].astype(np.uint8))
  return vd, root / "gt", v["masks"].astype(np.uint8)


def _inside_point(mask: np.ndarray):
  """(x, y): the mask pixel nearest its centroid among those at least half the largest
  distance from the mask's edge (so a click a pixel off still lands on the object)."""
  m = mask.astype(np.uint8)
  assert m.any(), "the object is not visible on that frame"
  dist = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
  ys, xs = np.nonzero(dist >= 0.5 * dist.max())
  cy, cx = np.argwhere(m).mean(0)
  i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
  return int(xs[i]), int(ys[i])


def _click_image(page, x: int, y: int):
  """Click video pixel (x, y) of the shown frame: the app shows it enlarged k times and the
  image element scales it with object-fit: contain, so map through the same letterboxing as
  gradio's select handler."""
  img = page.locator("#frame-image img")
  img.wait_for(state="visible")
  page.wait_for_function(  # visible is not decoded: a new frame's src may still be loading
    "() => { const i = document.querySelector('#frame-image img');"
    " return i && i.complete && i.naturalWidth > 0; }",
    timeout=UI_TIMEOUT_MS,
  )
  box = img.bounding_box()
  nat_w, nat_h = page.evaluate(
    "() => { const i = document.querySelector('#frame-image img');"
    " return [i.naturalWidth, i.naturalHeight]; }"
  )
  k = nat_w // WIDTH  # the app enlarges small frames by an integer factor
  assert k >= 1 and (nat_w, nat_h) == (WIDTH * k, HEIGHT * k), f"shown {nat_w}x{nat_h}"
  scale = min(box["width"] / nat_w, box["height"] / nat_h)
  ox = (box["width"] - nat_w * scale) / 2
  oy = (box["height"] - nat_h * scale) / 2
  px, py = (x + 0.4) * k * scale, (y + 0.4) * k * scale  # inside pixel (x, y) of the video
  page.mouse.click(box["x"] + ox + px, box["y"] + oy + py)


def _status(page):
  return page.locator("#status")


def _wait_status(page, text: str, server: Server, old=None):
  """Wait until the status line contains text (and differs from old, the status before the
  action); on timeout fail with what the page shows and the server log."""
  deadline = time.time() + UI_TIMEOUT_MS / 1000
  while time.time() < deadline:
    got = _status(page).inner_text()
    if text in got and got != old:
      return got
    time.sleep(0.2)
  raise AssertionError(
    f"status never showed {text!r}; it shows:\n{_status(page).inner_text()}\n"
    f"--- server log ---\n{server.tail()}"
  )


_MARKS = []  # (step, seconds since the test started): printed at the end (pytest -s)


def _mark(name: str):
  _MARKS.append((name, time.time()))


def _shot(page, name: str):
  _mark(name)
  if SCREENSHOTS:
    if name != "error":  # an earlier step's warning toast would hide the header
      page.evaluate("() => document.querySelectorAll('.toast-close').forEach(b => b.click())")
    time.sleep(0.6)  # toasts fade in and out
    SHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOT_DIR / f"{name}.png"), full_page=True)


def _set_frame(page, t: int):
  box = page.locator("#frame-slider input[type=number]")
  box.fill(str(t))
  box.press("Enter")
  box.blur()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  u = np.logical_or(a, b).sum()
  return float(np.logical_and(a, b).sum() / u) if u else 0.0


def _pred_dir(unzipped: pathlib.Path) -> pathlib.Path:
  """The folder of the zip that holds one PNG mask per frame (named like the frames)."""
  want = {f"{t:05d}.png" for t in range(NUM_FRAMES)}
  for d in sorted(p for p in unzipped.rglob("*") if p.is_dir()):
    if want <= {p.name for p in d.glob("*.png")}:
      return d
  listing = "\n".join(str(p.relative_to(unzipped)) for p in sorted(unzipped.rglob("*")))
  raise AssertionError(f"no folder of per-frame mask PNGs in the export:\n{listing}")


def test_cli_refuses_bad_arguments(tmp_path):
  """Bad arguments: one `python -m sam2pp_jax.app: error: ...` line, exit 2 (no gradio
  needed)."""
  cases = [
    (["--checkpoint", str(tmp_path / "nope")], "no such directory"),
    (["--checkpoint", str(tmp_path)], "not a model checkpoint"),
    (["--checkpoint", str(REPO / "checkpoints" / "tiny"), "--port", "70000"], "--port 70000"),
    (
      ["--checkpoint", str(REPO / "checkpoints" / "tiny"), "--video", str(tmp_path / "v")],
      "--video",
    ),
  ]
  for args, want in cases:
    r = subprocess.run(
      [sys.executable, "-m", "sam2pp_jax.app", *args], cwd=REPO, capture_output=True, text=True
    )
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("python -m sam2pp_jax.app: error: "), r.stderr
    assert want in last and "Traceback" not in r.stderr, r.stderr


@needs_chromium
@needs_packages
def test_app_in_browser(tmp_path):
  from playwright.sync_api import sync_playwright

  t_start = time.time()
  video_dir, gt_dir, gt = _write_video(tmp_path)
  session_dir = tmp_path / "session"
  log_path = tmp_path / "server.log"
  x0, y0 = _inside_point(gt[0] == 1)
  ys, xs = np.nonzero(gt[0] == 1)
  bx0, by0, bx1, by1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
  mask_png = tmp_path / "mask_prompt.png"  # white on black, as a user would upload
  cv2.imwrite(str(mask_png), (gt[CORRECTION_FRAME] == 1).astype(np.uint8) * 255)
  x1, y1 = _inside_point(gt[CORRECTION_FRAME] == 1)

  server = Server(session_dir, log_path)
  outside = []
  try:
    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
      try:
        ctx = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)

        def only_local(route):  # the page must not need the internet
          url = route.request.url
          if url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
            route.continue_()
          else:
            outside.append(url)
            route.abort()

        page.route("**/*", only_local)
        page.goto(server.url)
        _wait_status(page, "No video open", server)

        # bad input 1: a path that does not exist -> a message, no trace
        page.locator("#video-path textarea, #video-path input").first.fill(
          str(tmp_path / "no_such_video")
        )
        page.locator("#open-btn").click()
        got = _wait_status(page, "Error", server)
        assert "no such video" in got and "Traceback" not in got, got
        _shot(page, "error")

        # open the video
        page.locator("#video-path textarea, #video-path input").first.fill(str(video_dir))
        page.locator("#open-btn").click()
        got = _wait_status(page, "Opened", server)
        assert f"{NUM_FRAMES} frames {WIDTH}x{HEIGHT}" in got, got
        page.locator("#frame-image img").wait_for(state="visible")
        _mark("open")

        # bad input 2: propagate before any prompt -> a message from the core
        page.locator("#propagate-btn").click()
        got = _wait_status(page, "Error", server, old=got)
        assert "nothing to propagate" in got and "Traceback" not in got, got

        # a box around the object on frame 0 (box mode: two clicks on opposite corners), then a
        # positive click on it (the shipped tiny checkpoint segments nothing from clicks alone:
        # checkpoints/tiny/README.md)
        page.locator("#click-mode").get_by_text("box (two corners)").click()
        _click_image(page, bx0, by0)
        _wait_status(page, "first corner", server)
        _click_image(page, bx1, by1)
        got = _wait_status(page, "Box added", server)
        assert "objects: [1]" in got and "prompted frames: 0 " in got, got
        _mark("box")
        page.locator("#click-mode").get_by_text("positive click").click()
        _click_image(page, x0, y0)
        got = _wait_status(page, "positive click", server)
        assert "objects: [1]" in got and "prompted frames: 0 " in got, got
        _shot(page, "click")

        # propagate (both ways), then scrub to a later frame
        page.locator("#propagate-btn").click()
        got = _wait_status(page, "Propagated", server)
        assert f"results on {NUM_FRAMES}/{NUM_FRAMES}" in got, got
        _set_frame(page, CORRECTION_FRAME)
        _wait_status(page, f"Frame {CORRECTION_FRAME}.", server)
        _shot(page, "propagated")

        # a correction click on that frame, propagate again
        _click_image(page, x1, y1)
        got = _wait_status(page, f"frame {CORRECTION_FRAME}.", server)
        assert f"prompted frames: 0, {CORRECTION_FRAME} " in got, got
        _mark("correction")

        # a second object from an uploaded mask image on this frame, then removed again
        page.locator("#new-object-btn").click()
        got = _wait_status(page, "New object 2", server)
        page.get_by_text("Prompt with a mask image").click()
        page.locator("#mask-upload input[type=file]").set_input_files(str(mask_png))
        page.locator("#mask-upload img").first.wait_for(state="visible")
        page.locator("#add-mask-btn").click()
        got = _wait_status(page, "added to object 2", server)
        assert "objects: [1, 2]" in got, got
        _shot(page, "mask")
        page.locator("#remove-object-btn").click()
        got = _wait_status(page, "Removed object 2", server)
        assert "objects: [1] " in got, got

        page.locator("#propagate-btn").click()
        got = _wait_status(page, "Propagated", server, old=got)

        # export and download the zip
        page.locator("#export-btn").click()
        _wait_status(page, "Exported", server)
        link = page.locator("#export-file a").first
        link.wait_for(state="visible")
        with page.expect_download() as dl:
          link.click()
        zip_path = tmp_path / "export.zip"
        dl.value.save_as(str(zip_path))
        _shot(page, "export")

        # a page reload keeps the object and its prompts
        page.reload()
        got = _wait_status(page, "Session restored", server)
        assert f"objects: [1] | prompted frames: 0, {CORRECTION_FRAME} " in got, got
        status_before = got
        _mark("reloaded")

      finally:
        browser.close()
    server.stop()
    _mark("stopped")

    # a server restart on the same --session-dir restores the session from disk
    server = Server(session_dir, log_path)
    _mark("restarted")
    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
      try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.goto(server.url)
        got = _wait_status(page, "Restored the last session", server)
        assert f"objects: [1] | prompted frames: 0, {CORRECTION_FRAME} " in got, got
        assert "(propagated)" in got, got
        _mark("restored")
      finally:
        browser.close()
  finally:
    server.stop()

  # gradio's page template loads one script from a CDN, async (iframe embedding only): allowed,
  # it fails offline without delaying anything; any other outside request is a regression
  other = [u for u in outside if not u.startswith(ALLOWED_OUTSIDE)]
  assert not other, f"the page requested non-local URLs: {other[:5]}"

  # score the exported masks
  out = tmp_path / "unzipped"
  with zipfile.ZipFile(zip_path) as z:
    z.extractall(out)
  src = _pred_dir(out)
  pred_root = tmp_path / "pred"
  shutil.copytree(src, pred_root / SEQ)
  pred = np.stack(
    [read_palette_png(str(pred_root / SEQ / f"{t:05d}.png"))[0] for t in range(NUM_FRAMES)]
  )
  assert pred.shape == gt.shape, (pred.shape, gt.shape)
  assert _iou(pred[0] == 1, gt[0] == 1) > 0, "the clicked object is absent on the clicked frame"
  assert _iou(pred[CORRECTION_FRAME] == 1, gt[CORRECTION_FRAME] == 1) > 0

  from sam2pp_jax.eval.score import score

  report = score("mask", "davis2017", str(gt_dir), str(pred_root))
  jf = float(report["overall"]["J&F-Mean"])
  assert math.isfinite(jf), report["overall"]
  steps = " ".join(f"{n}@{t - t_start:.0f}s" for n, t in _MARKS)
  print(f"\napp browser test: J&F={jf:.3f} in {time.time() - t_start:.0f}s ({steps})")
  print(f"status after reload: {status_before}")
