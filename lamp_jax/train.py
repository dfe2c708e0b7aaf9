r"""Train (and, when the config asks, generate data first and evaluate after) — the project's main command.

  python -m lamp_jax.train --config=configs/sim.py --workdir=/tmp/lamp_sim
  python -m lamp_jax.train --config=configs/sim.py:no_motion --workdir=/tmp/lamp_sim_no_motion
  python -m lamp_jax.train --config=configs/sim.py:smoke --workdir=/tmp/smoke --config.seed=1

Rerunning the same command after an interruption resumes from the latest checkpoint in ``<workdir>``.
What runs:
  1. ``sim_data.enabled``: generate the built-in simulator dataset with ``lamp_jax.sim.generate`` if absent;
  2. the config's stages in order (``stage_order``), e.g. stage 1 motion -> stage 2 action;
  3. ``eval.enabled``: closed-loop evaluation of the final (EMA) parameters; the per-task success table with
     95 % CIs is printed and written to ``<workdir>/eval_results.json``;
  4. plots (loss curves, success per task) as PNG in ``<workdir>/plots``.
Several processes (TPU pod hosts, or two processes on localhost with ``--coordinator_address``,
``--num_processes``, ``--process_id``) run the same command; only process 0 logs and writes plots.

Every field of every stage is checked before step 1 (``training/preflight.py``). A config error -- an unknown
``--config.<path>`` override, a config file that does not load, a value that cannot work, a workdir whose
checkpoints hold another model -- prints ``error: config field <full.path>: <what>`` (the model mismatch lists
the differing parameters and fields on the following lines) and exits with status 2; a workdir whose
checkpoints are all corrupted, a checkpoint / metrics.jsonl that cannot be written (a full disk), or a corrupt data
file met while training prints ``error: ...`` (naming the step / file) and exits with status 1; what was already
written stays intact and rerunning the same command resumes.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

EXIT_CONFIG_ERROR = 2
EXIT_RUN_ERROR = 1

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file: configs/<name>.py[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, plots).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-process runs without cluster detection.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
_STOP_AFTER = flags.DEFINE_integer("stop_after_step", None,
                                   "Stop (with a checkpoint) once this global step is reached, e.g. to fit a job's "
                                   "time limit; rerun without it to continue. Skips evaluation and plots.")


def _fail(message: str, status: int = EXIT_CONFIG_ERROR):
  """Prints 'error: <message>' (no traceback) and exits with ``status``."""
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  sys.exit(status)


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def unresolved_override(config: ml_collections.ConfigDict, path: str) -> str | None:
  """Why the override path ``a.b[0].c`` names no field of ``config`` (one line), or None when it does."""
  node, walked = config, "config"
  for part in path.split("."):
    match = re.fullmatch(r"([^\[\]]+)((?:\[\d+\])*)", part)
    if match is None:
      return f"config field {path}: {part!r} is not a field name"
    name, indices = match.group(1), [int(i) for i in re.findall(r"\[(\d+)\]", match.group(2))]
    if not isinstance(node, ml_collections.ConfigDict):
      return f"config field {path}: {walked} is a value ({type(node).__name__}), it has no field {name!r}"
    if name not in node:
      fields = sorted(str(k) for k in node.keys())
      close = difflib.get_close_matches(name, fields, n=1)
      hint = f" (did you mean {walked}.{close[0]}?)" if close else ""
      where = "the run config" if walked == "config" else walked[len("config."):]
      return f"config field {path}: {where} has no field {name!r}{hint}; its fields: {fields}"
    node, walked = node[name], f"{walked}.{name}"
    for i in indices:
      if not isinstance(node, (list, tuple)) or i >= len(node):
        return f"config field {path}: {walked} has no entry [{i}]"
      node, walked = node[i], f"{walked}[{i}]"
  return None


def _load_config_file(spec: str) -> ml_collections.ConfigDict:
  """``path[:arg]`` -> ``get_config(arg)`` of the file, as ml_collections loads it (used to explain a failure)."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  path, *args = spec.split(":")
  module_spec = importlib.util.spec_from_file_location("lamp_jax_config_file", path)
  if module_spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"no config file {path}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(*args)


def _innermost(e: BaseException) -> BaseException:
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  return e


def _last_line(e: BaseException) -> str:
  """An exception's own message (ml_collections embeds whole tracebacks: their last line is the message)."""
  lines = [line for line in str(e).strip().splitlines() if line.strip()]
  text = _one_line(lines[-1]) if lines else type(e).__name__
  if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":  # a KeyError's repr of its key
    text = text[1:-1]
  return text


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every failure as one ``error:`` line and exit status 2 (instead of a chain of
  tracebacks that names only the leaf of an unknown ``--config.<path>``)."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  (flags, config files and overrides all end here)
    error = e
  specs = [a[len("--config="):] for a in argv[1:] if a.startswith("--config=")]
  if specs:
    try:
      config = _load_config_file(specs[-1])
    except Exception as e:  # pylint: disable=broad-except
      _fail(f"config file {specs[-1]}: {type(_innermost(e)).__name__}: {_last_line(_innermost(e))}")
    for arg in argv[1:]:
      match = re.match(r"--config\.([^=]+)(=|$)", arg)
      if match:
        problem = unresolved_override(config, match.group(1))
        if problem:
          _fail(problem)
  inner = _innermost(error)
  detail = _last_line(error)
  if inner is not error and _last_line(inner) not in detail:
    detail += f" ({type(inner).__name__}: {_last_line(inner)})"
  _fail(detail)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required")
  from lamp_jax.training import multihost

  multihost.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from lamp_jax import experiment

  from lamp_jax.data import errors as data_errors
  from lamp_jax.training import checkpoint_compat
  from lamp_jax.training import checkpoints
  from lamp_jax.training import metrics
  from lamp_jax.training import preflight

  config = _CONFIG.value
  if not isinstance(config, ml_collections.ConfigDict):  # ml_collections defers a file's load error
    spec = flags.FLAGS["config"].config_filename
    try:
      _load_config_file(spec)
      problem = "could not be loaded"
    except Exception as e:  # pylint: disable=broad-except
      problem = f"{type(_innermost(e)).__name__}: {_last_line(_innermost(e))}"
    _fail(f"config file {spec}: {problem}")
  multihost.check_same_config_across_hosts(config)
  try:
    result = experiment.run(config, _WORKDIR.value, stop_after_step=_STOP_AFTER.value)
  except (preflight.ConfigError, checkpoint_compat.CheckpointMismatchError) as e:
    _fail(str(e))
  except (checkpoints.NoIntactCheckpointError, checkpoints.CheckpointWriteError, metrics.MetricsWriteError) as e:
    _fail(str(e), EXIT_RUN_ERROR)
  except data_errors.DataError as e:  # a corrupt / missing data file met while training
    reader = checkpoints.Checkpointer(checkpoints.checkpoint_dir(_WORKDIR.value), read_only=True, async_save=False)
    latest = reader.latest_step()
    reader.close()
    _fail(f"{str(e).replace(data_errors.MESSAGE_MARKER, '')} -- the checkpoints written so far are intact "
          f"(newest: step {latest}); repair or replace the file (or set data.pipeline.skip_bad=True to skip bad "
          "files, counted) and rerun the same command to resume", EXIT_RUN_ERROR)
  if result is not None and experiment.is_main_process():
    print(json.dumps({"workdir": os.path.abspath(_WORKDIR.value), **result.get("summary", {})}), flush=True)


if __name__ == "__main__":
  from lamp_jax import allocator

  allocator.reexec_with_tcmalloc("lamp_jax.train")  # XLA:CPU runs 1.75x faster on it (allocator.py)
  flags.mark_flags_as_required(["config", "workdir"])
  sys.exit(app.run(main, flags_parser=parse_flags))
