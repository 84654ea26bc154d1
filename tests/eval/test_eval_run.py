"""`eval.py run` end to end: a tiny random model over tiny datasets in every reader's layout."""

import json
import os
import sys

import numpy as np
import pytest
from conftest import REPO

from sam2pp_jax.checkpoint import save_model
from sam2pp_jax.data.formats import writers
from sam2pp_jax.eval import runner
from sam2pp_jax.model.random_params import random_params
from sam2pp_jax.model.sam2pp import build_model

sys.path.insert(0, str(REPO))
import eval as eval_cli  # noqa: E402

T, H, W = 5, 48, 64


def _video(seed, n_obj=2):
  """A moving-rectangles clip with masks, boxes (object 1) and points (one per object)."""
  rng = np.random.default_rng(seed)
  frames = np.empty((T, H, W, 3), np.uint8)
  masks = np.zeros((T, H, W), np.int32)
  pts = np.zeros((T, n_obj, 2))
  for t in range(T):
    frames[t] = rng.integers(20, 60, (H, W, 3))
    for k in range(n_obj):
      y, x = 6 + 18 * k + t, 8 + 20 * k + 2 * t
      frames[t, y : y + 12, x : x + 14] = (200 - 60 * k, 90, 40 + 80 * k)
      masks[t, y : y + 12, x : x + 14] = k + 1
      pts[t, k] = (x + 7.5, y + 6.5)
  boxes = np.zeros((T, 4))
  for t in range(T):
    ys, xs = np.nonzero(masks[t] == 1)
    boxes[t] = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
  boxes[3] = np.nan  # an absent frame
  vis = np.ones((T, n_obj), bool)
  vis[2, 1] = False
  return {
    "frames": frames,
    "masks": masks,
    "boxes_xywh": boxes,
    "points_xy": pts,
    "point_visible": vis,
  }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("evalrun")
  model = build_model("tiny")
  params = random_params(model, 0)
  ckpt = save_model(root / "ckpt", params, "tiny")
  seqs = {"seq_a": _video(1), "seq_b": _video(2)}
  return root, ckpt, (model, params), seqs


def _check_report(report, task, names):
  assert report["task"] == task and set(report["per_sequence"]) == set(names)
  for v in report["overall"].values():
    if isinstance(v, float):
      assert v == v or task == "point", report["overall"]  # NaN only where documented (OA)


LAYOUTS = [
  # (reader, task, writer call, split)
  ("davis2017", "mask", lambda r, s: writers.write_davis2017(r, s), None),
  ("youtubevos", "mask", lambda r, s: writers.write_youtubevos(r, s), None),
  ("mose", "mask", lambda r, s: writers.write_mose(r, s), None),
  ("got10k", "box", lambda r, s: writers.write_got10k(r, s), None),
  ("lasot", "box", lambda r, s: writers.write_lasot(r, s), None),
  ("trackingnet", "box", lambda r, s: writers.write_trackingnet(r, s, split="TRAIN_0"), "TRAIN_0"),
  (
    "tapvid_davis",
    "point",
    lambda r, s: writers.write_tapvid_pickle(os.path.join(r, "tapvid_davis.pkl"), s),
    None,
  ),
  ("badja", "point", lambda r, s: writers.write_badja(r, s), None),
  ("tag", "mask", lambda r, s: writers.write_tag(r, s), None),
  ("tag", "box", lambda r, s: writers.write_tag(r, s), None),
  ("tag", "point", lambda r, s: writers.write_tag(r, s), None),
]


@pytest.mark.slow
@pytest.mark.parametrize(
  "reader,task,write,split", LAYOUTS, ids=[f"{l[0]}-{l[1]}" for l in LAYOUTS]
)
def test_run_every_layout(setup, tmp_path, reader, task, write, split):
  _, ckpt, mp, seqs = setup
  data = tmp_path / "data"
  write(str(data), seqs)
  out = tmp_path / "out"
  report = runner.run_benchmark(
    ckpt, reader, str(data), task, str(out), split=split, quiet=True, model_and_params=mp
  )
  names = sorted(report["per_sequence"])
  assert len(names) == 2
  _check_report(report, task, names)
  assert (out / f"scores_{report['protocol']}.json").is_file()
  for n in names:
    p = out / "pred" / (n + {"mask": "", "box": ".txt", "point": ".npz"}[task])
    assert p.exists()
  if task == "box":
    rows = np.loadtxt(out / "pred" / f"{names[0]}.txt", dtype=int)
    assert rows.shape == (T, 4) and (rows >= 0).all()
    z = np.load(out / "pred" / f"{names[0]}_xyxy.npz")  # the float boxes next to it
    assert z["boxes_xyxy"].shape == (T, 4) and z["tracked"].all()


@pytest.mark.slow  # ~30-50 s on 2 CPU cores; CI's slow stage runs it
def test_cli_run_is_resumable(setup, tmp_path, monkeypatch, capsys):
  root, ckpt, _, seqs = setup
  data = tmp_path / "davis"
  writers.write_davis2017(str(data), seqs)
  out = tmp_path / "out"
  args = [
    "run",
    "--checkpoint",
    ckpt,
    "--dataset",
    "davis2017",
    "--root",
    str(data),
    "--task",
    "mask",
    "--out",
    str(out),
    "--quiet",
  ]
  assert eval_cli.main(args) == 0
  first = json.loads((out / "scores_davis2017.json").read_text())
  assert set(first["per_sequence"]) == {"seq_a", "seq_b"}
  # prediction PNGs cover every frame, with the video's size
  from sam2pp_jax.io.png import read_palette_png

  pngs = sorted(os.listdir(out / "pred" / "seq_a"))
  assert len(pngs) == T and read_palette_png(out / "pred" / "seq_a" / pngs[0])[0].shape == (H, W)

  # a second run must not track again; deleting one prediction re-tracks only that one
  calls = []
  real = runner.track_sequence
  monkeypatch.setattr(
    runner, "track_sequence", lambda *a, **k: calls.append(a[2].name) or real(*a, **k)
  )
  assert eval_cli.main(args) == 0
  assert calls == []
  import shutil

  shutil.rmtree(out / "pred" / "seq_b")
  assert eval_cli.main(args) == 0
  assert calls == ["seq_b"]
  again = json.loads((out / "scores_davis2017.json").read_text())
  assert again["overall"] == first["overall"]
  assert again["memory"] == "sam2"
  # the same OUT with another memory policy would mix predictions: refused, nothing tracked
  capsys.readouterr()
  assert eval_cli.main(args + ["--memory", "samurai"]) == 2
  assert "give another --out" in capsys.readouterr().err and calls == ["seq_b"]
  assert eval_cli.main(args + ["--memory", "samurei"]) == 2
  assert "choose one of sam2, samurai" in capsys.readouterr().err


@pytest.mark.parametrize(
  "dataset, root, task, extra, needle",
  [
    ("nope", "", "mask", [], "nope"),
    ("davis2017", "missing", "mask", [], "missing"),
    ("davis2017", "", "box", ["--protocol", "davis2017"], "protocol"),
  ],
)
def test_cli_run_bad_inputs(setup, tmp_path, capsys, dataset, root, task, extra, needle):
  """An unknown dataset, a missing root, a protocol of another task: exit 2, one error line."""
  _, ckpt, _, _ = setup
  args = ["run", "--checkpoint", ckpt, "--dataset", dataset, "--root", str(tmp_path / root)]
  rc = eval_cli.main(args + ["--task", task, *extra, "--out", str(tmp_path / "o")])
  assert rc == 2 and needle in capsys.readouterr().err


def test_box_prediction_files(tmp_path):
  """pred/<seq>.txt as the reference writes it (float32 xywh clipped at 0, '%d'), '0 0 0 0' for
  frames not tracked (NaN in the tracker's result), and the float boxes in <seq>_xyxy.npz."""

  class Seq:
    name = "seq_x"

  boxes = np.array(
    [[1061.3, 298.7, 946.2, 872.9], [np.nan] * 4, [-2.5, 3.9, 10.2, 20.0]], np.float32
  )
  path = runner.write_prediction(str(tmp_path), "box", Seq(), {"boxes_xyxy": boxes})
  assert path == str(tmp_path / "seq_x.txt")
  # by hand: (1061.3, 298.7, -115.1, 574.2) -> 1061 298 0 574; (-2.5, 3.9, 12.7, 16.1) -> 0 3 12 16
  assert (tmp_path / "seq_x.txt").read_text() == "1061 298 0 574\n0 0 0 0\n0 3 12 16\n"
  z = np.load(tmp_path / "seq_x_xyxy.npz")
  assert z["tracked"].tolist() == [True, False, True]
  np.testing.assert_array_equal(z["boxes_xyxy"], boxes)  # NaN where not tracked
