"""Run config of the trainer tests: the toy model of ``tests/toy_model.py`` on synthetic batches.

Variants: '' (one stage) · 'two_stage' (motion stage, then action stage with the motion expert frozen) ·
'pipeline' (one stage on a tiny lamp_sim-layout RLDS dataset read by the real data pipeline; its tfds data_dir
comes from the LAMP_TEST_DATA_DIR environment variable, so that every process of a multi-process test reads
its own share of the dataset's files).
"""

import copy
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
        motion=defaults.stage_config(3, frozen=(r"^action_",), optimizer=copy.deepcopy(opt),  # not aliased:
                                     # an override of one stage's optimizer must not reach the other
                                     model_overrides=dict(loss=dict(weights=dict(action=0.0)))),
        action=defaults.stage_config(3, frozen=(r"^motion_",), optimizer=copy.deepcopy(opt),
                                     model_overrides=dict(loss=dict(weights=dict(motion=0.0))))))
  elif arg in ("", "pipeline"):
    c.stages.main = defaults.stage_config(4, optimizer=opt)
    if arg == "pipeline":
      from lamp_jax import specs
      from lamp_jax.data import config as data_config

      c.model.proprio_dim = specs.SIM_STATE_DIM
      d = data_config.default_data_config()
      d.datasets = [data_config.dataset_entry("lamp_sim_toy", data_dir=os.environ.get("LAMP_TEST_DATA_DIR", ""))]
      d.window_size, d.action_horizon = int(c.model.window), int(c.model.action_horizon)
      d.max_action_dim, d.max_proprio_dim = int(c.model.action_dim), specs.SIM_STATE_DIM
      d.image_size, d.cameras, d.augment = (8, 8), ("image_primary",), False
      d.scene_flow_num_points, d.scene_flow_horizon = int(c.model.num_points), int(c.model.flow_steps)
      d.shuffle_buffer_size, d.num_parallel_calls, d.num_parallel_reads = 16, 1, 1
      d.deterministic, d.resume_mode = True, "skip"
      c.data.kind = "pipeline"
      c.data.pipeline = d
  else:
    raise ValueError(f"unknown variant {arg!r} of tests/toy_train_config.py (variants: '', 'two_stage')")
  return c
