"""The package's import layering, read off the source with `ast` (nothing is imported).

Imports go downwards only:

  io (0) <- model (1) <- tracking / convert / checkpoint (2) <- data / train / eval / parity (3)
  <- demo / app / engine (4) <- the top-level CLIs (track.py, train.py, eval.py,
  convert_torch_weights.py), which live outside the package.

A module's layer is that of its component: the first name under `sam2pp_jax` (a sub-package
such as `tracking`, or a top-level module such as `checkpoint`). `progress` is a stdlib-only
utility with no package imports, so it sits with io at the bottom. `sam2pp_jax/__init__.py`
is the facade: it may re-export from any layer (lazily, inside functions, so that importing
a low-layer module never runs a higher layer through the package's __init__).

Checked, for module-level and function-level imports alike:
  * no edge from a lower layer to a higher one (same layer across components is allowed);
  * no cycle between modules, and none between components (e.g. checkpoint <-> convert);
  * nothing in the package imports a top-level CLI (`track`, `train`, `eval`,
    `convert_torch_weights`) or `configs`;
  * no function-level import of a `sam2pp_jax` module: those are reserved for optional
    third-party dependencies (torch, cv2 in a writer, tensorboardX, orbax, ...). Hiding a
    package import inside a function only hides a cycle or an upward edge from readers.
"""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = "sam2pp_jax"

LAYERS = {
  "io": 0,
  "progress": 0,
  "model": 1,
  "tracking": 2,
  "convert": 2,
  "checkpoint": 2,
  "data": 3,
  "train": 3,
  "eval": 3,
  "parity": 3,
  "demo": 4,
  "app": 4,
  "engine": 4,
}
LAYER_NAMES = {
  0: "io",
  1: "model",
  2: "tracking/convert/checkpoint",
  3: "data/train/eval/parity",
  4: "demo/app/engine",
}
FACADE = PKG  # sam2pp_jax/__init__.py: may re-export from any layer
FORBIDDEN_TOP = ("track", "train", "eval", "convert_torch_weights", "configs")


@dataclass(frozen=True)
class Edge:
  src: str  # importing module (dotted)
  dst: str  # imported module (dotted; top-level name for non-package imports)
  line: int
  function: bool  # inside a def / lambda

  def __str__(self):
    where = "function-level" if self.function else "module-level"
    return f"{self.src} -> {self.dst} ({where}, {module_path(self.src)}:{self.line})"


def module_path(mod: str) -> str:
  """Repo-relative path of a package module (the __init__.py for a package)."""
  p = ROOT.joinpath(*mod.split("."))
  if p.is_dir():
    return str((p / "__init__.py").relative_to(ROOT))
  return str(p.with_suffix(".py").relative_to(ROOT))


def package_modules() -> dict[str, pathlib.Path]:
  """{dotted name: path} of every module of the package (packages by their __init__)."""
  out = {}
  for path in sorted((ROOT / PKG).rglob("*.py")):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _resolve(node: ast.ImportFrom, src: str, is_pkg: bool) -> str:
  if not node.level:
    return node.module or ""
  base = src.split(".") if is_pkg else src.split(".")[:-1]
  base = base[: len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def imports_of(src: str, path: pathlib.Path, modules) -> list[Edge]:
  """Every import statement of a module, with the target resolved to a package module where it
  names one (`from sam2pp_jax.data import synthetic` -> sam2pp_jax.data.synthetic)."""
  tree = ast.parse(path.read_text(), str(path))
  is_pkg = path.name == "__init__.py"
  edges: list[Edge] = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      if isinstance(child, ast.Import):
        for a in child.names:
          edges.append(Edge(src, a.name, child.lineno, in_function))
      elif isinstance(child, ast.ImportFrom):
        base = _resolve(child, src, is_pkg)
        for a in child.names:
          sub = f"{base}.{a.name}"
          edges.append(Edge(src, sub if sub in modules else base, child.lineno, in_function))
      visit(child, fn)

  visit(tree, False)
  return list(dict.fromkeys(edges))  # `from m import a, b`: one edge


def component(mod: str) -> str | None:
  """`sam2pp_jax.tracking.prompts` -> 'tracking'; the facade (`sam2pp_jax`) -> None."""
  parts = mod.split(".")
  return parts[1] if len(parts) > 1 and parts[0] == PKG else None


def _cycles(graph: dict[str, set]) -> list[list[str]]:
  """Strongly connected components with more than one node, or a self-loop (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []
  counter = [0]

  def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        strong(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1 or v in graph.get(v, ()):
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      strong(v)
  return out


def violations(edges: list[Edge]) -> list[str]:
  """Every broken rule, one line each, naming the edge (empty when the layering holds)."""
  bad = []
  internal = [e for e in edges if e.dst == PKG or e.dst.startswith(PKG + ".")]
  for e in edges:
    top = e.dst.split(".")[0]
    if top in FORBIDDEN_TOP and not e.dst.startswith(PKG):
      bad.append(f"imports top-level `{top}` (a CLI / configs, not part of the package): {e}")
  for e in internal:
    s, d = component(e.src), component(e.dst)
    if e.function and e.src != FACADE:
      bad.append(
        f"function-level import of a package module (import it at module level; "
        f"function-level imports are for optional third-party deps): {e}"
      )
    if s is None:
      continue  # the facade may re-export anything
    if d is None:
      bad.append(f"imports the package facade `{PKG}` (import the defining module): {e}")
      continue
    for c in (s, d):
      if c not in LAYERS:
        bad.append(f"component {c!r} has no layer; add it to LAYERS in tests/test_layers.py: {e}")
    if s in LAYERS and d in LAYERS and LAYERS[d] > LAYERS[s]:
      bad.append(
        f"upward import, layer {LAYERS[s]} ({LAYER_NAMES[LAYERS[s]]}) -> layer "
        f"{LAYERS[d]} ({LAYER_NAMES[LAYERS[d]]}): {e}"
      )
  mod_graph: dict[str, set] = {}
  comp_graph: dict[str, set] = {}
  for e in internal:
    if e.src != FACADE and e.dst != e.src:
      mod_graph.setdefault(e.src, set()).add(e.dst)
    s, d = component(e.src), component(e.dst)
    if s is not None and d is not None and s != d:
      comp_graph.setdefault(s, set()).add(d)

  def witnesses(cycle, key):
    inside = set(cycle)
    return "; ".join(
      str(e)
      for e in internal
      if key(e.src) in inside and key(e.dst) in inside and key(e.src) != key(e.dst)
    )

  for cyc in _cycles(mod_graph):
    bad.append(f"import cycle between modules {' <-> '.join(cyc)}: {witnesses(cyc, str)}")
  for cyc in _cycles(comp_graph):
    bad.append(f"import cycle between components {' <-> '.join(cyc)}: {witnesses(cyc, component)}")
  return bad


def package_edges() -> list[Edge]:
  modules = package_modules()
  return [e for m, p in modules.items() for e in imports_of(m, p, modules)]


def test_layering_holds():
  edges = package_edges()
  assert len({e.src for e in edges}) > 20, "the scan found almost no imports; is ROOT right?"
  bad = violations(edges)
  assert not bad, "import layering broken:\n  " + "\n  ".join(bad)


# ------------------------------------------------------------------ the checker can fail


def _e(src, dst, function=False):
  return Edge(src, dst, 1, function)


@pytest.mark.parametrize(
  "edges, needle",
  [
    (
      [_e("sam2pp_jax.tracking.point_readout", "sam2pp_jax.train.losses")],
      "upward import, layer 2 (tracking/convert/checkpoint) -> layer 3 (data/train/eval/parity): "
      "sam2pp_jax.tracking.point_readout -> sam2pp_jax.train.losses",
    ),
    ([_e("sam2pp_jax.model.sam2pp", "sam2pp_jax.io.frames")], None),
    (
      [
        _e("sam2pp_jax.checkpoint", "sam2pp_jax.convert.key_map"),
        _e("sam2pp_jax.convert.convert", "sam2pp_jax.checkpoint"),
      ],
      "import cycle between components checkpoint <-> convert",
    ),
    (
      [
        _e("sam2pp_jax.train.a", "sam2pp_jax.train.b"),
        _e("sam2pp_jax.train.b", "sam2pp_jax.train.a"),
      ],
      "import cycle between modules sam2pp_jax.train.a <-> sam2pp_jax.train.b",
    ),
    ([_e("sam2pp_jax.demo", "track")], "imports top-level `track`"),
    ([_e("sam2pp_jax.demo", "configs.train")], "imports top-level `configs`"),
    (
      [_e("sam2pp_jax.eval.runner", "sam2pp_jax.checkpoint", function=True)],
      "function-level import of a package module",
    ),
    ([_e("sam2pp_jax.train.tb_writer", "tensorboardX", function=True)], None),
    ([_e(PKG, "sam2pp_jax.checkpoint", function=True)], None),
    ([_e("sam2pp_jax.wizard", "sam2pp_jax.model.sam2pp")], "component 'wizard' has no layer"),
    ([_e("sam2pp_jax.eval.runner", PKG)], "imports the package facade"),
  ],
)
def test_checker_flags_each_rule(edges, needle):
  bad = violations(edges)
  if needle is None:
    assert not bad, bad
  else:
    assert any(needle in b for b in bad), bad


def test_resolution_of_relative_and_from_imports(tmp_path):
  src = tmp_path / "m.py"
  src.write_text(
    "from . import synthetic\nfrom ..model import sam2pp\n"
    "def f():\n  from sam2pp_jax.data.formats import open_dataset\n"
  )
  mods = {"sam2pp_jax.data.synthetic", "sam2pp_jax.model.sam2pp", "sam2pp_jax.data.formats"}
  got = [(e.dst, e.function) for e in imports_of("sam2pp_jax.data.m", src, mods)]
  assert got == [
    ("sam2pp_jax.data.synthetic", False),
    ("sam2pp_jax.model.sam2pp", False),
    ("sam2pp_jax.data.formats", True),
  ]
