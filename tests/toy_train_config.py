"""Run config of the trainer tests: the toy model of ``tests/toy_model.py`` on synthetic batches.

Variants: '' (one stage) · 'two_stage' (motion stage, then action stage with the motion expert frozen).
"""

import os
import tempfile

import ml_collections

from lamp_jax.training import defaults
from tests import toy_model


def get_config(arg: str = ""):
  c = defaults.base_config()
  c.seed = 3
  c.compilation_cache_dir = os.path.join(tempfile.gettempdir(), "lamp_jax_tests_xla_cache")
  c.logging.measure_roof = False
  c.model_module = "tests.toy_model"
  c.model = toy_model.model_config("tiny")
  c.data.global_batch_size = 8
  c.checkpoint.every_steps = 2
  c.checkpoint.async_save = True
  c.logging.every_steps = 1
  c.logging.tensorboard = True
  c.logging.progress_bar = False
  c.ema.decay = 0.9
  opt = defaults.optimizer_config(lr=3e-3, end_lr=1e-4, warmup_steps=1, weight_decay=1e-4)
  if arg == "two_stage":
    c.stage_order = ("motion", "action")
    c.stages = ml_collections.ConfigDict(dict(
        motion=defaults.stage_config(3, frozen=(r"^action_",), optimizer=opt,
                                     model_overrides=dict(action_loss_weight=0.0)),
        action=defaults.stage_config(3, frozen=(r"^motion_",), optimizer=opt,
                                     model_overrides=dict(motion_loss_weight=0.0))))
  elif arg == "":
    c.stages.main = defaults.stage_config(4, optimizer=opt)
  else:
    raise ValueError(f"unknown variant {arg!r} of tests/toy_train_config.py (variants: '', 'two_stage')")
  return c
