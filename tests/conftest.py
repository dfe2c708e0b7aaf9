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

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_default_matmul_precision", "highest")

