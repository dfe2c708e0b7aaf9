r"""LARA (latent action representation alignment) on a policy: model sizes and smoke runs on synthetic batches.
Schema: ``lamp_jax/training/defaults.py``; the method: ``lamp_jax/models/lara.py``; docs/lara.md.

  python -m lamp_jax.train --config=configs/lara.py:smoke --workdir=/tmp/lara_smoke          # a minute, synthetic
  python -m lamp_jax.bench --config=configs/lara.py:lamp_sim --what=train_step --batch_size=4
  python -m lamp_jax.train --config=configs/sim.py:lara --workdir=/tmp/lara_sim               # the benchmark run

Variants (``:variant``):
  lamp_sim, pi0_sim      the sim-size LaMP / π0 with LARA on (single-view 'sim' latent action model on the front
                         camera, pairs (o_t, o_{t+H}), alignment after layer L-2, weights 0.01 / 0.01): model sizes
                         for bench / summary (the benchmark itself is configs/sim.py:lara, lara_frozen)
  smoke                  the 'tiny' LaMP + 'tiny' latent action model trained jointly for a few steps
  smoke_pi0              the same on the 'tiny' π0 (alignment at its last layer, L)
  smoke_frozen           the frozen-LAM ablation: ^lam/ frozen, no 'lam' term; ``--config.init.lam.path=<a
                         configs/lam.py:smoke workdir>`` loads a trained latent action model (empty: random)
"""

from __future__ import annotations

import ml_collections

from lamp_jax import specs
from lamp_jax.models import lam_config
from lamp_jax.models import lara
from lamp_jax.models import registry
from lamp_jax.training import defaults
from lamp_jax.training import pretrained

VARIANTS = ("lamp_sim", "pi0_sim", "smoke", "smoke_pi0", "smoke_frozen")


def model(policy: str, size: str, *, joint: bool = True, block_from_end: int = 2) -> ml_collections.ConfigDict:
  """A policy's model config ('lamp' or 'pi0', ``size`` of its variants) with LARA and a single-view latent action
  model of the matching size ('tiny' with 'tiny', else 'sim') on the front camera, pairs (o_t, o_{t+H})."""
  m = registry.get(policy).model_config(size)
  lam = lam_config.model_config("tiny" if size == "tiny" else "sim")
  lam.views = (specs.IMAGE_PRIMARY,)
  lam.future_offsets = (int(m.action_horizon),)
  lam.loss.weights.cross_view = 0.0
  return lara.add(m, lam, block_from_end=block_from_end, joint=joint)


def get_config(arg: str = "smoke") -> ml_collections.ConfigDict:
  arg = arg or "smoke"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/lara.py (variants: {VARIANTS})")
  c = defaults.base_config()
  c.seed = 0
  c.logging.measure_roof = False
  c.data.kind = "synthetic"
  if arg in ("lamp_sim", "pi0_sim"):
    c.model = model(arg.split("_")[0], "sim")
    c.data.global_batch_size = 8
    c.stages.main = defaults.stage_config(100)
    return c
  joint = arg != "smoke_frozen"
  policy = "pi0" if arg == "smoke_pi0" else "lamp"
  # The tiny LaMP expert has 2 layers (one cross / self pair), the tiny π0 expert 2 Gemma layers: L-2 would be
  # the input embedding, so the smoke runs align at the last layer.
  c.model = model(policy, "tiny", joint=joint, block_from_end=0)
  c.data.global_batch_size = 4
  optimizer = defaults.optimizer_config(lr=1e-3, end_lr=1e-4, warmup_steps=0, weight_decay=1e-4, clip_norm=1.0)
  c.stages.main = defaults.stage_config(4, frozen=() if joint else (r"^lam/",), optimizer=optimizer)
  if not joint:
    c.init = ml_collections.ConfigDict(dict(lam=pretrained.init_entry("checkpoint", "lam", path="", source="/")))
  c.checkpoint.every_steps = 2
  c.checkpoint.max_to_keep = 2
  c.logging.every_steps = 1
  c.logging.progress_bar = False
  return c
