"""The demo's pieces that are not track.py / eval.py themselves: the held-out suites, the
copy-first-frame baseline and the summary table."""

import contextlib
import io

import numpy as np
import pytest

from sam2pp_jax import demo
from sam2pp_jax.data import synthetic


def _videos(difficulty, n=2, frames=6):
  return list(
    synthetic.generate_dataset(7, n, num_frames=frames, height=64, width=64, difficulty=difficulty)
  )


def _copy_scores(tmp_path, videos):
  paths = demo.write_held_out(str(tmp_path / "heldout"), videos)
  outs = demo.write_copy_baseline(paths, str(tmp_path / "results"))
  with contextlib.redirect_stdout(io.StringIO()):
    return demo.score_all(paths, outs, verbose=False)


def test_copy_baseline_is_perfect_on_static_video_and_not_on_moving_video(tmp_path):
  """The baseline repeats the frame-0 prompt: exact where nothing moves, worse where it does."""
  still = _copy_scores(tmp_path / "static", _videos("static"))
  assert still["J&F"] == pytest.approx(1.0)
  assert still["AUC"] > 0.95 and still["delta_avg"] == pytest.approx(1.0)
  moving = _copy_scores(tmp_path / "normal", _videos("normal", frames=16))
  assert moving["J&F"] < 0.9 and moving["AUC"] < 0.9 and moving["delta_avg"] < 0.9


def test_comparison_table_gives_the_ratio_to_the_baseline():
  t = demo.comparison_table(
    {"J&F": 0.8, "AUC": 0.6, "delta_avg": 0.3}, {"J&F": 0.2, "AUC": 0.3, "delta_avg": 0.1}
  )
  assert "copy first frame" in t
  assert t.splitlines()[-1].split()[-3:] == ["4.00x", "2.00x", "3.00x"]


def test_suites_hard_is_long_and_occluded():
  spec = synthetic.SUITES["hard"]
  assert spec["num_frames"] >= 60
  v = demo.held_out_videos(0, 3, suite="hard")
  assert all(x["frames"].shape[0] >= 60 for _, x in v)
  hidden_runs = []
  for _, x in v:
    vis = x["visible"][:, 0]
    run = best = 0
    for ok in vis:
      run = 0 if ok else run + 1
      best = max(best, run)
    hidden_runs.append(best)
  assert max(hidden_runs) >= 4  # a long disappearance with re-appearance exists
  with pytest.raises(ValueError, match="unknown suite"):
    demo.held_out_videos(0, 1, suite="impossible")


def test_demo_without_a_checkpoint_says_what_to_do(tmp_path, capsys):
  rc = demo.main(["--checkpoint", str(tmp_path / "none"), "--workdir", str(tmp_path / "w")])
  assert rc == 2
  err = capsys.readouterr().err
  assert "no checkpoint" in err and "--scratch" in err


def test_the_shipped_checkpoint_loads():
  import os

  from sam2pp_jax.checkpoint import load_model

  path = os.path.join(demo._repo_root(), "checkpoints", "tiny")
  if not os.path.isdir(path):
    pytest.skip("checkpoints/tiny is not in this checkout")
  cfg, params = load_model(path)
  assert cfg.preset == "tiny"
  assert np.isfinite(np.asarray(params["no_obj_ptr"])).all()
