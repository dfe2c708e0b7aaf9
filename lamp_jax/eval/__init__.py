"""Closed-loop evaluation on the built-in tabletop benchmark (``python -m lamp_jax.eval``).

``sim_eval.evaluate(policy, suite, episodes_per_task, ...)`` runs a policy and returns per-task success with
Wilson 95 % intervals; ``policies.make_policy('expert' | 'random' | 'checkpoint:DIR')`` builds policies.
"""
