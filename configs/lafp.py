r"""LAFP (latent action flow policy) and its behaviour-cloned baseline: model sizes and smoke runs on synthetic
batches. Schema: ``lamp_jax/training/defaults.py``; the method: ``lamp_jax/models/lafp.py``; docs/lafp.md.

  python -m lamp_jax.train --config=configs/lafp.py:smoke --workdir=/tmp/lafp_smoke          # a minute, synthetic
  python -m lamp_jax.train --config=configs/sim.py:lafp --workdir=/tmp/lafp_sim \
      --config.init.lam.path=<workdir of a configs/lam.py:sim_single_h8 run>

Variants (``:variant``):
  sim, sim_bc        the benchmark sizes of configs/sim.py:lafp / lafp_bc on synthetic batches (bench, summary)
  smoke, smoke_bc    the 'tiny' LAFP / BC baseline for a few steps; ``--config.init.lam.path=<a configs/lam.py
                     run with the tiny single-view model>`` loads a trained latent action model (empty: random);
                     the LAM is frozen (^lam/) either way
"""

from __future__ import annotations

import ml_collections

from lamp_jax.models import lafp_config
from lamp_jax.training import defaults
from lamp_jax.training import pretrained

VARIANTS = ("sim", "sim_bc", "smoke", "smoke_bc")


def get_config(arg: str = "smoke") -> ml_collections.ConfigDict:
  arg = arg or "smoke"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/lafp.py (variants: {VARIANTS})")
  objective = "bc" if arg.endswith("_bc") else "flow"
  c = defaults.base_config()
  c.seed = 0
  c.logging.measure_roof = False
  c.data.kind = "synthetic"
  c.init = ml_collections.ConfigDict(dict(lam=pretrained.init_entry("checkpoint", "lam", path="", source="/")))
  if arg.startswith("sim"):
    c.model = lafp_config.model_config("sim", objective)
    c.data.global_batch_size = 8
    c.stages.main = defaults.stage_config(100, frozen=(r"^lam/",))
    return c
  c.model = lafp_config.model_config("tiny", objective)
  c.data.global_batch_size = 4
  optimizer = defaults.optimizer_config(lr=1e-3, end_lr=1e-4, warmup_steps=0, weight_decay=1e-4, clip_norm=1.0)
  c.stages.main = defaults.stage_config(4, frozen=(r"^lam/",), optimizer=optimizer)
  c.checkpoint.every_steps = 2
  c.checkpoint.max_to_keep = 2
  c.logging.every_steps = 1
  c.logging.progress_bar = False
  return c
