"""Test configuration: JAX (and TensorFlow) stay on the CPU, with deterministic, quiet settings."""

import os
import pathlib

# Must be set before jax / tensorflow are imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# XLA's persistent compilation cache, shared by the xdist workers and by the commands the tests start in
# subprocesses: many tests compile the same tiny model's step, and on a 2-core machine compiling is most of the
# suite's time. Every compilation is cached (no minimum compile time). The cache is keyed by the program, the
# compile options and the jax / XLA versions, so a stale entry is never used; a corrupt or half-written one is
# read as a miss (jax warns and compiles). Set JAX_COMPILATION_CACHE_DIR="" to run without it.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests' programs are tiny, so XLA's backend optimisation (LLVM -O2, expensive passes) costs far more than it
# saves: jax's 'disable most optimizations' roughly halves the compile time (measured: two LaMP / LARA loss tests,
# 100 s -> 60 s wall, 144 -> 75 CPU-s, no cache). Results stay within the tests' tolerances. Set
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test the optimised programs.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA's CPU fusion emitters (the MLIR code generator that jax 0.10 uses by default) compile the tests' programs about
# twice as slowly as the older loop emitters (measured, cache off: the tiny LaMP + LARA loss gradient 12.5-14 s ->
# 6.4-9 s). Both compute the same operations; the tests' tolerances hold. Commands the tests start in subprocesses
# inherit it. Put --xla_cpu_use_fusion_emitters=true in XLA_FLAGS to test the default code generator.
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false").strip()

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_default_matmul_precision", "highest")


# pytest.ini hands whole test files to the xdist workers (--dist=loadfile): many modules cache their tiny model's
# initialisation and jitted functions per process, which a module split over both workers pays twice. Files go out
# in collection order (--no-loadscope-reorder; xdist would otherwise start with the files that have the most tests),
# the longest first, so that no long file starts when the other worker is nearly done. Seconds per file, measured
# with an empty compilation cache: LARA 87, the README main command's smoke run 78, LAM 58, PyTorch parity 49, pi0,
# motion image and trainer state 46 each, export 37. A stale list costs time, never correctness.
_LONGEST_FIRST = ("test_lara.py", "test_train_sim_smoke.py", "test_lam.py", "test_torch_parity.py", "test_pi0.py",
                  "test_motion_image.py", "test_train_model_state.py", "test_export.py")


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
