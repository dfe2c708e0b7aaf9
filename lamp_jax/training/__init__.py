"""Training: mesh and sharding rules, train state, optimizer, checkpoints, metrics, the loop, experiments.

  sharding.py    ('data', 'fsdp', 'tensor') mesh from the config; logical-axis rules -> NamedShardings
  state.py       TrainState, built with jax.eval_shape and initialised directly into its shardings
  optim.py       AdamW + warmup/cosine + clipping + accumulation + freezing by path regex; EMA
  checkpoints.py orbax CheckpointManager: state + run position + config + normalisation statistics
  metrics.py     JSONL + TensorBoard (+ wandb) writer; host matmul roof
  defaults.py    the run-config schema and its validation
  trainer.py     the loop: stages, one jitted sharded step with donated state, resume, non-finite stop
  experiment.py  data generation -> stages -> closed-loop evaluation -> table + plots (python -m lamp_jax.train)
  plots.py       loss curves and success-per-task PNGs
"""
