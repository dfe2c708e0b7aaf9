"""Are a FiLM-CNN policy's grounded keypoints still on the named objects after the policy stages?

  python -m lamp_jax.eval.grounding_drift --checkpoint=WORKDIR [--step=N] [--no-ema] [--out=FILE]

Stage 0 (``lamp_jax/training/grounding.py``) trains keypoints 0 and 1 of the FiLM-CNN prefix encoder
(``model.vlm.kind='film_cnn'``) to point at the instruction's object and receptacle. Nothing in the policy losses
keeps them there when the policy stages train the encoder on: measured on ``configs/sim.py:film_cnn`` with the
encoder trained on (seed 0), the held-out front-camera object keypoint went from 2.17 px after stage 0 to 41.97 px
after the policy stages, 0 % of labels within one cell (docs/results.md). This command repeats stage 0's held-out
evaluation on a checkpoint's 'vlm' parameters and on the run's stage-0 file (``<workdir>/grounding/
encoder_params.npz``), on the same held-out scenes (the last ``grounding.heldout`` of ``grounding.scenes``
rendered scenes, from the cache stage 0 used).

Prints JSON: ``{"stage0": {key: {rmse_px, within_one_cell, labels}}, "checkpoint": {...}, "rmse_change_px":
{key: checkpoint - stage0}, "step", "params", "heldout_scenes", "scenes"}`` with keys '<camera>/<role>'.
``lamp_jax.experiment`` runs the same check after training (``<workdir>/grounding/after_policy.json``).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import jax
import ml_collections

from lamp_jax.eval import checkpoint_policy
from lamp_jax.models import film_cnn
from lamp_jax.sim import grounding as grounding_data
from lamp_jax.training import defaults
from lamp_jax.training import grounding

AFTER_POLICY_FILE = "after_policy.json"


def _load_scenes(num_scenes: int, image_size: int, cameras, progress: bool):
  return grounding_data.load_or_render(num_scenes, image_size, cameras, progress=progress)


def drift(config: ml_collections.ConfigDict, vlm_params: Any, stage0_path: str | None) -> dict:
  """Held-out keypoint accuracy of ``vlm_params`` (a policy's 'vlm' subtree) and of the stage-0 file
  ``stage0_path`` (skipped when None or missing), per '<camera>/<role>' (``grounding.evaluate``).

  Args:
    config: the run config (``grounding``, ``model.vlm`` of kind 'film_cnn', tokenizer).
    vlm_params: the encoder's parameters, as the policy holds them under 'vlm'.
    stage0_path: ``<workdir>/grounding/encoder_params.npz``.
  """
  if config.get("grounding", None) is None:
    raise ValueError("the run config has no 'grounding' section: the run had no stage 0 to compare with")
  model_cfg = defaults.stage_model_config(config, config.stage_order[0])
  data, encoder_cfg, heldout = grounding.heldout_scenes(config, model_cfg, _load_scenes, grounding_data.ROLES)
  out: dict[str, Any] = {"heldout_scenes": int(len(heldout)), "scenes": data["path"]}
  # One compiled evaluation for both parameter sets.
  apply_fn = jax.jit(grounding.role_logits_fn(film_cnn.FiLMCNNEncoder(encoder_cfg), len(data["roles"])))
  out["checkpoint"] = grounding.evaluate(apply_fn, vlm_params, data, heldout, encoder_cfg.image_size)
  if stage0_path and os.path.exists(stage0_path):
    out["stage0"] = grounding.evaluate(apply_fn, grounding.load_params(stage0_path), data, heldout,
                                       encoder_cfg.image_size)
    out["rmse_change_px"] = {key: round(out["checkpoint"][key]["rmse_px"] - value["rmse_px"], 3)
                             for key, value in out["stage0"].items() if key in out["checkpoint"]}
  else:
    out["stage0"] = None
  return out


def stage0_file(workdir: str) -> str:
  """``<workdir>/grounding/encoder_params.npz`` (the run's stage-0 encoder)."""
  return os.path.join(workdir, "grounding", grounding.PARAMS_FILE)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="the run's workdir (or its checkpoints/ directory)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest intact one)")
  parser.add_argument("--no-ema", action="store_true", help="the raw parameters instead of the EMA ones")
  parser.add_argument("--out", default="", help="also write the JSON here")
  args = parser.parse_args(argv)
  policy = checkpoint_policy.CheckpointPolicy(args.checkpoint, step=args.step, use_ema=not args.no_ema)
  if "vlm" not in policy.params:
    raise ValueError(f"checkpoint {policy.checkpoint_dir} has no 'vlm' parameters")
  workdir = os.path.dirname(policy.checkpoint_dir)
  result = drift(policy.config, policy.params["vlm"], stage0_file(workdir))
  result.update(step=policy.step, params=policy.params_key)
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    with open(args.out, "w") as fh:
      fh.write(text + "\n")
  return result


if __name__ == "__main__":
  main()
