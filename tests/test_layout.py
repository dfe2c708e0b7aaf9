"""The repository's layout rules: packages depend one way (every import counts, deferred ones included), no module
imports itself back through others, and nothing cites files a user does not have."""

import ast
import os
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lamp_jax"

# Which lamp_jax units (sub-packages or top-level modules) each unit may import. A unit missing here is an error:
# adding a package means deciding where it sits. Commands (train, serve, ...) sit on top and may import anything.
COMMANDS = {"train", "serve", "compare", "summary", "bench", "experiment", "ablate", "export"}
ALLOWED = {
    "specs": set(),
    "tokenizer": set(),
    "flow_image": set(),
    "allocator": set(),
    "export_format": set(),
    "models": {"specs", "flow_image"},
    # The data bench and inspect commands run under the trainer's allocator.
    "data": {"specs", "flow_image", "allocator"},
    "sim": {"specs", "flow_image"},
    "serving": set(),
    # The probing toolkit is numpy-only; its checkpoint loader (probe/lam_latents.py, probe/__main__.py) reads
    # LAM checkpoints (training) and their pipelines (data).
    "probe": {"models", "training", "data", "specs"},
    "libero": {"sim", "specs"},
    "training": {"models", "data", "specs", "tokenizer"},
    "eval": {"training", "models", "data", "sim", "libero", "serving", "specs", "tokenizer", "allocator", "flow_image"},
    # The benchmark and planning tools sit on top, beside the commands.
    "perf": {"training", "models", "data", "specs", "tokenizer", "eval", "export", "export_format", "allocator", "serving"},
}


def _modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    yield ".".join(parts), path


def _imports(path):
  """Every lamp_jax module a file imports (at any depth of the file: deferred imports count)."""
  tree = ast.parse(path.read_text(encoding="utf-8"))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    for name in names:
      if name.startswith("lamp_jax."):
        yield name


def _unit(module: str) -> str:
  return module.split(".")[1] if module.count(".") >= 1 else module


def test_packages_depend_in_the_allowed_directions():
  problems = []
  for module, path in _modules():
    if module == "lamp_jax":
      continue
    src = _unit(module)
    if src in COMMANDS:
      continue
    if src not in ALLOWED:
      problems.append(f"{module}: unit {src!r} has no entry in tests/test_layout.py ALLOWED")
      continue
    for imported in _imports(path):
      dst = _unit(imported)
      if dst != src and dst not in ALLOWED[src] and (PACKAGE / dst).exists() | (PACKAGE / f"{dst}.py").exists():
        problems.append(f"{module} imports {imported} ({src} -> {dst} is not allowed)")
  assert not problems, "\n".join(problems)


def test_no_module_import_cycles():
  known = {m for m, _ in _modules()}
  graph = {}
  for module, path in _modules():
    deps = set()
    for imported in _imports(path):
      while imported not in known and "." in imported:  # 'from pkg.mod import name' -> pkg.mod
        imported = imported.rsplit(".", 1)[0]
      if imported in known and imported != module and not module.startswith(imported + "."):
        deps.add(imported)
    graph[module] = deps
  # Iterative DFS for a back edge.
  state, cycles = {}, []
  for start in graph:
    if state.get(start):
      continue
    stack = [(start, iter(sorted(graph[start])))]
    path = [start]
    state[start] = 1
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        state[node] = 2
        stack.pop()
        path.pop()
        continue
      if state.get(child) == 1:
        cycles.append(" -> ".join(path[path.index(child):] + [child]))
      elif not state.get(child):
        state[child] = 1
        stack.append((child, iter(sorted(graph.get(child, ())))))
        path.append(child)
  assert not cycles, "\n".join(cycles)


def test_nothing_cites_files_outside_the_repository():
  pattern = re.compile(r"DESIGN\.md|\.\./shared|shared/papers")
  offenders = []
  for top in ("lamp_jax", "configs", "launch", "notebooks", "docs", "tests", "README.md", "setup.py"):
    root = REPO / top
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    for path in files:
      if path.suffix not in (".py", ".md", ".sh", ".ipynb", ".txt", ".json", "") or path.name == "test_layout.py":
        continue
      try:
        text = path.read_text(encoding="utf-8")
      except (UnicodeDecodeError, OSError):
        continue
      if pattern.search(text):
        offenders.append(str(path.relative_to(REPO)))
  assert not offenders, offenders


def test_the_torch_port_imports_only_jax_free_modules_of_lamp_jax():
  """lamp_torch serves exported policies in a process without JAX: of lamp_jax it may import only modules whose own
  imports are JAX-free (checked by import inspection in tests/test_torch_serve.py)."""
  allowed = {"lamp_jax.export_format", "lamp_jax.tokenizer", "lamp_jax.data", "lamp_jax.data.normalization"}
  used = set()
  for path in (REPO / "lamp_torch").rglob("*.py"):
    used |= {m for m in _imports(path)}
  assert used <= allowed, sorted(used - allowed)
