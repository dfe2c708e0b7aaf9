"""Which inputs does a trained policy use? The loss on training batches with one input shuffled across the batch.

  python -m lamp_jax.eval.input_reliance --checkpoint=WORKDIR [--batches=8] [--batch-size=32]

For each input group (every camera together, each camera alone, the instruction tokens, the proprio state) the
group is rolled by one example along the batch, so every example is paired with another episode's input while
everything else (actions, noise draws, flow times) stays the same. The deterministic loss (``train=False``, the
same PRNG key per batch for every variant) is then compared with the unperturbed loss. A ratio near 1 means the
policy ignores that input: e.g. a policy whose loss barely moves when the cameras are shuffled is acting from the
instruction and the state alone (the behaviour-cloning "copycat" shortcut), and cannot find objects that move
between episodes.

Prints JSON: ``{"loss": {variant: mean loss}, "ratio_to_real": {variant: ratio}, ...}``. Batches come from the
checkpoint's own training pipeline (``config.data.pipeline``: the same dataset and augmentation as in training).
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Callable, Iterable

import jax
import numpy as np

from lamp_jax import specs


def perturbations(image_keys: Iterable[str]) -> dict[str, Callable[[dict], dict]]:
  """name -> function(batch) -> a copy of the batch with that input group rolled by one along the batch axis."""
  image_keys = tuple(image_keys)

  def roll_observation(keys):
    def apply(batch):
      out = dict(batch)
      out[specs.OBSERVATION] = dict(batch[specs.OBSERVATION])
      for key in keys:
        out[specs.OBSERVATION][key] = np.roll(batch[specs.OBSERVATION][key], 1, axis=0)
      return out
    return apply

  def roll_task(batch):
    out = dict(batch)
    out[specs.TASK] = {k: np.roll(v, 1, axis=0) for k, v in batch[specs.TASK].items()}
    return out

  variants = {"cameras": roll_observation(image_keys)}
  if len(image_keys) > 1:
    variants.update({f"camera:{k}": roll_observation((k,)) for k in image_keys})
  variants["instruction"] = roll_task
  variants["proprio"] = roll_observation((specs.PROPRIO,))
  return variants


def input_reliance(loss_fn: Callable, params, batches: Iterable[dict], image_keys: Iterable[str],
                   seed: int = 0) -> dict:
  """Mean loss over ``batches`` unperturbed ('real') and under each of :func:`perturbations`.

  ``loss_fn(params, batch, rng) -> float32[]`` must be deterministic for a fixed key. Batches need at least two
  examples. Returns dict(loss={variant: mean}, ratio_to_real={variant: mean / real}, batches=n)."""
  variants = perturbations(image_keys)
  sums = {"real": 0.0, **{name: 0.0 for name in variants}}
  count = 0
  for i, batch in enumerate(batches):
    if np.asarray(batch[specs.OBSERVATION][specs.PROPRIO]).shape[0] < 2:
      raise ValueError("input_reliance needs batches of at least 2 examples (inputs are rolled along the batch)")
    key = jax.random.key(seed + i)
    sums["real"] += float(loss_fn(params, batch, key))
    for name, perturb in variants.items():
      sums[name] += float(loss_fn(params, perturb(batch), key))
    count += 1
  if not count:
    raise ValueError("input_reliance got no batches")
  loss = {k: v / count for k, v in sums.items()}
  return {"loss": {k: round(v, 5) for k, v in loss.items()},
          "ratio_to_real": {k: round(v / loss["real"], 4) for k, v in loss.items() if k != "real"},
          "batches": count}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True, help="training workdir or its checkpoints directory")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--stage", default=None, help="whose loss: a stage of the run's config, e.g. 'motion' for the "
                 "Motion Expert's flow-matching loss (default: the run's last stage)")
  p.add_argument("--batches", type=int, default=8)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)

  from lamp_jax.eval.checkpoint_policy import CheckpointPolicy  # pylint: disable=g-import-not-at-top
  from lamp_jax.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  policy = CheckpointPolicy(args.checkpoint, step=args.step, stage=args.stage)
  stage = args.stage or policy.config.stage_order[-1]
  if policy.config.data.kind != "pipeline":
    raise ValueError(f"{args.checkpoint}: config.data.kind={policy.config.data.kind!r}; input_reliance reads the "
                     "training pipeline (data.kind='pipeline')")
  config = copy.deepcopy(policy.config)
  config.data.global_batch_size = int(args.batch_size)
  # The trainer's own data source: the stage's data overrides apply, as in training.
  data = trainer_lib.PipelineData(config, int(args.batch_size), process_index=0, process_count=1)
  iterator = data.batches(list(config.stage_order).index(stage), stage, offset=0)
  prepare = trainer_lib.HostBatchPreparer(config, policy.model_cfg)
  batches = (prepare(next(iterator)) for _ in range(int(args.batches)))
  loss_fn = jax.jit(lambda params, batch, rng: policy.model.apply(
      {"params": params}, batch, rng, train=False, method="compute_loss")[0])
  result = input_reliance(loss_fn, policy.params, batches, policy.model_cfg.image_keys, seed=int(args.seed))
  result.update(checkpoint=policy.checkpoint_dir, step=policy.step, stage=stage, params=policy.params_key,
                batch_size=int(args.batch_size))
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
