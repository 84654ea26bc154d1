"""`eval.py score` CLI: every protocol's JSON lines up with its reference block, bad input
exits 2."""

import json
import math
import os
import sys

import pytest
from conftest import REPO, SHARED

sys.path.insert(0, str(REPO))
import eval as eval_cli  # noqa: E402

METRICS = os.environ.get("SAM2PP_METRICS_DIR", str(SHARED / "metrics"))

CASES = [  # (case, task, protocol, reference block)
  ("vos_dev", "mask", "davis2017", "davis2017"),
  ("vos_dev", "mask", "sav", "sam2plus_sav_benchmark"),
  ("sot_dev", "box", "ope", "sam2plus_sot_benchmark"),
  ("sot_dev", "box", "ope-visibility", "sam2plus_sot_benchmark_visibility"),
  ("sot_dev", "box", "got10k", "got10k_toolkit"),
  ("pt_dev", "point", "tapvid", "tapnet_tapvid"),
  ("pt_dev", "point", "sam2plus", "sam2plus_tapvid"),
  ("pt_dev", "point", "pck", "sam2plus_pck"),
]


def _num(v):
  return float(v) if isinstance(v, str) else v


def _compare(got, want, tol, where):
  if isinstance(want, dict):
    for k, v in want.items():
      if isinstance(v, (dict, int, float, str)) and not isinstance(v, bool):
        if isinstance(v, str) and v not in ("nan", "inf", "-inf"):
          continue
        assert k in got, f"{where}: missing {k!r}"
        _compare(got[k], v, tol, f"{where}/{k}")
    return
  g, w = _num(got), _num(want)
  if isinstance(w, float) and math.isnan(w):
    assert math.isnan(g), f"{where}: {g} vs nan"
  else:
    assert abs(g - w) <= tol, f"{where}: {g} vs {w}"


@pytest.mark.parametrize("case,task,protocol,block", CASES, ids=[c[2] for c in CASES])
def test_cli_json_matches_reference_block(tmp_path, case, task, protocol, block, capsys):
  path = os.path.join(METRICS, case, "expected.json")
  if not os.path.isfile(path):
    pytest.skip(f"metric reference cases not found at {path} (set SAM2PP_METRICS_DIR)")
  ref = json.load(open(path))["references"][block]
  if ref.get("status") != "ok":
    pytest.skip(f"{block}: reference refused this case")
  out = tmp_path / "r.json"
  rc = eval_cli.main(
    [
      "score",
      "--task",
      task,
      "--protocol",
      protocol,
      "--gt",
      os.path.join(METRICS, case, "gt"),
      "--pred",
      os.path.join(METRICS, case, "pred"),
      "--json",
      str(out),
    ]
  )
  assert rc == 0
  assert "wrote" in capsys.readouterr().out
  got = json.loads(out.read_text())
  assert got["task"] == task and got["protocol"] == protocol
  tol = ref["comparison"]["abs_tol"]
  overall = ref.get("global", ref.get("overall"))
  _compare(
    got["overall"], {k: v for k, v in overall.items() if not isinstance(v, list)}, tol, "overall"
  )
  if "per_sequence" in ref:
    _compare(got["per_sequence"], ref["per_sequence"], tol, "per_sequence")
  if block == "davis2017":
    _compare(got["per_object"], ref["per_object"], tol, "per_object")
  if block == "sam2plus_sav_benchmark":
    _compare(got["per_object"], ref["per_object"], tol, "per_object")


def test_cli_bad_input_exits_2(tmp_path, capsys):
  rc = eval_cli.main(
    [
      "score",
      "--task",
      "box",
      "--protocol",
      "davis2017",
      "--gt",
      str(tmp_path),
      "--pred",
      str(tmp_path),
    ]
  )
  assert rc == 2 and "protocol" in capsys.readouterr().err
  rc = eval_cli.main(
    ["score", "--task", "mask", "--gt", str(tmp_path / "nope"), "--pred", str(tmp_path)]
  )
  err = capsys.readouterr().err
  assert rc == 2 and "nope" in err and err.count("\n") == 1


def test_help_says_what_is_refused(capsys):
  with pytest.raises(SystemExit):
    eval_cli.main(["score", "--help"])
  text = capsys.readouterr().out
  for word in ("Refused", "davis2017", "got10k", "tapnet"):
    assert word.lower() in text.lower()
