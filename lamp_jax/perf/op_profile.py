"""Where a compiled XLA computation spends its time: per-op self times from a profiler trace, grouped by kind.

  python -m lamp_jax.bench --config=configs/lamp.py:sim --what=train_step --op_breakdown

The computation runs ``repeats`` times under ``jax.profiler`` (perfetto trace); every trace event that carries an
``hlo_op`` (one executed XLA op, on the thread that ran it) contributes its *self* time (its duration minus the
op events nested in it, e.g. a ``while`` minus its body's ops). Ops are grouped by kind from their HLO names:

  matmul   dot / convolution and the XLA:CPU library fusions that carry them (``ynn_fusion`` = YNNPACK,
           ``onednn``, GPU ``cublas`` gemms; their fused epilogues count with them; other custom calls count as other)
  layout   copy / transpose fusions (pure data movement: layout changes, stacking of scanned layers)
  loop     while / conditional bookkeeping (their bodies' ops are counted by kind)
  other    everything else (elementwise, reductions, dynamic slices, broadcasts, ...)

Shares are fractions of the summed op self time. On a multi-threaded host two independent ops may overlap in
wall time, so the sum can exceed the wall time; the shares still say where the work goes. The figure the
benchmark derives from them, ``roof_fraction / share['matmul']``, is the fraction of the matmul roof the step
would reach if every non-matmul op took no time at all (an upper bound for this model on this host).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Any, Callable

import jax

KINDS = ("matmul", "layout", "loop", "other")
_MATMUL = re.compile(r"^(dot|convolution|ynn_fusion|onednn|.*_dot_fusion|cublas)")
_LAYOUT = re.compile(r"^(copy|transpose)")
_LOOP = re.compile(r"^(while|conditional|call)")


def op_kind(hlo_op: str) -> str:
  """The kind ('matmul' | 'layout' | 'loop' | 'other') of an HLO op from its name, e.g. 'ynn_fusion.63'."""
  name = re.sub(r"\.\d+$", "", hlo_op)
  if _MATMUL.match(name):
    return "matmul"
  if _LAYOUT.match(name):
    return "layout"
  if _LOOP.match(name):
    return "loop"
  return "other"


def self_times(events: list[dict]) -> dict[str, float]:
  """Self time (µs) per HLO op name from perfetto 'X' events that carry ``args.hlo_op``.

  Per thread, an op event that lies inside another one (a loop body inside its ``while``) is subtracted from the
  enclosing event's time.
  """
  by_thread: dict[Any, list[dict]] = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and "hlo_op" in (e.get("args") or {}) and "dur" in e:
      by_thread[(e.get("pid"), e.get("tid"))].append(e)
  totals: dict[str, float] = collections.defaultdict(float)
  for thread_events in by_thread.values():
    thread_events.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
    open_ops: list[tuple[float, str]] = []  # (end time, op) of the enclosing events
    for e in thread_events:
      start, dur, name = float(e["ts"]), float(e["dur"]), e["args"]["hlo_op"]
      while open_ops and open_ops[-1][0] <= start:
        open_ops.pop()
      if open_ops:  # nested in its direct parent: not the parent's own time
        totals[open_ops[-1][1]] -= dur
      totals[name] += dur
      open_ops.append((start + dur, name))
  return dict(totals)


def read_trace_events(trace_dir: str) -> list[dict]:
  """The events of the newest perfetto trace (``*.trace.json.gz``) under ``trace_dir``."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no perfetto trace (*.trace.json.gz) under {trace_dir}")
  with gzip.open(files[-1], "rt") as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def op_time_breakdown(call: Callable[[], Any], repeats: int = 5, top: int = 10) -> dict:
  """Profiles ``repeats`` calls of ``call`` (already compiled and warmed up; its result is blocked on).

  Returns dict(op_ms_per_call={kind: ms}, share={kind: fraction}, top_ops=[[op, ms per call, kind], ...]).
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  with tempfile.TemporaryDirectory(prefix="lamp_jax_profile_") as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    try:
      for _ in range(repeats):
        jax.block_until_ready(call())
    finally:
      jax.profiler.stop_trace()
    per_op = self_times(read_trace_events(trace_dir))
  if not per_op:
    raise RuntimeError("the profiler trace holds no XLA op events (hlo_op): cannot break the time down")
  by_kind = dict.fromkeys(KINDS, 0.0)
  for name, micros in per_op.items():
    by_kind[op_kind(name)] += micros
  total = sum(by_kind.values())
  ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
  return {
      "op_ms_per_call": {k: round(v / repeats / 1e3, 3) for k, v in by_kind.items()},
      "share": {k: round(v / total, 4) for k, v in by_kind.items()},
      "top_ops": [[name, round(micros / repeats / 1e3, 3), op_kind(name)] for name, micros in ranked],
  }
