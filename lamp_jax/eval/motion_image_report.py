r"""Predicted vs true flow images of a trained policy with a motion-image head, on held-out simulator frames.

  python -m lamp_jax.eval.motion_image_report --checkpoint=/tmp/pi0_mi --out=/tmp/pi0_mi/motion_image_report \
      --frames=8

For each frame: the scripted expert runs a held-out task (seeds from ``tasks.EVAL_SEED_OFFSET``, families in the
suite's order) with recording; at step t = a third of the demonstration (the arm is moving) the policy sees that
observation (``CheckpointPolicy.observation_batch``: the training preprocessing) and its
``reconstruct_motion_image`` (Euler steps of the head from noise, decoded by the frozen VAE) predicts the flow
image; the TRUE flow image is ``flow_image.flow_to_rgb`` of the simulator's exact dense optical flow of the
reference camera ('front' = image_0, the camera of the training flow images) from t to t + k
(``sim.optical_flow.dense_flow``), k = the action horizon as in the generated data, with the data config's
``optical_flow_max_magnitude`` (default ``flow_image.default_max_magnitude`` of the image width).

Writes into ``--out``:
  motion_image_report.png    one row per frame: camera image | true flow image | predicted flow image
  motion_image_frames.npz    the same images exactly (uint8[N, S, S, 3] 'camera', 'true_flow_image',
                             'predicted_flow_image') and the exact flow float32[N, S, S, 2] 'true_flow'
  motion_image_report.json   per frame and mean: 'flow_epe_px' (mean end-point error in pixels of the flow decoded
                             from the prediction, ``flow_image.rgb_to_flow``), 'flow_epe_moving_px' (over pixels whose
                             true flow is longer than one saturation level), the no-motion baselines
                             'zero_flow_epe_px' / 'zero_flow_epe_moving_px', 'image_l1' / 'image_mse' (prediction vs
                             true flow image, both in [-1, 1]); the settings (k, max magnitude, steps, checkpoint)

The same figures as the VAE's own report (``vae.VAELibrary.report``), whose reconstruction error is the floor of
the head's. Runs trained on synthetic data read the sim cameras under the lamp_sim dataset's names
(image_primary = image_0, image_secondary = image_1, image_wrist = image_2).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from lamp_jax import flow_image
from lamp_jax.eval import plots
from lamp_jax.eval.checkpoint_policy import CheckpointPolicy
from lamp_jax.models import vae as vae_lib
from lamp_jax.sim import env as env_lib
from lamp_jax.sim import experts
from lamp_jax.sim import optical_flow
from lamp_jax.sim import tasks

# Model camera -> simulator observation key for runs without a data pipeline (the lamp_sim standardisation's).
SIM_CAMERA_KEYS = {"image_primary": "image_0", "image_secondary": "image_1", "image_wrist": "image_2",
                   "image_tertiary": "image_3"}
PNG, NPZ, JSON = "motion_image_report.png", "motion_image_frames.npz", "motion_image_report.json"


def flow_settings(policy: CheckpointPolicy) -> tuple[int, float]:
  """(k, max_magnitude in pixels) of the policy's training flow images: k = the action horizon (the generated
  data's ``--optical-flow-steps``), the data config's ``optical_flow_max_magnitude`` when set (> 0), else
  ``flow_image.default_max_magnitude`` of the image size."""
  k = int(policy.action_horizon)
  magnitude = 0.0
  if policy.data_cfg is not None:
    magnitude = float(policy.data_cfg.get("optical_flow_max_magnitude", 0.0) or 0.0)
  return k, magnitude if magnitude > 0 else flow_image.default_max_magnitude(int(policy.image_size))


def held_out_frames(*, suite: str, num_frames: int, image_size: int, flow_steps: int, max_magnitude: float,
                    seed_offset: int = tasks.EVAL_SEED_OFFSET) -> list[dict]:
  """Held-out simulator frames with their exact flow: [{'family', 'seed', 'step', 'instruction', 'observation'
  (the env's observation dict), 'true_flow' float32[S, S, 2], 'true_flow_image' uint8[S, S, 3]}]."""
  if num_frames < 1:
    raise ValueError(f"--frames must be >= 1, got {num_frames}")
  families = tasks.suite_families(suite)
  env = env_lib.TabletopEnv(image_size=image_size, render=True)
  out = []
  try:
    for j in range(num_frames):
      family, seed = families[j % len(families)], int(seed_offset) + j
      task = tasks.sample_task(family, seed)
      episode = experts.run_expert_episode(env, task, seed=seed, record=True)
      frames = episode["frames"]
      t = len(frames) // 3
      flow = optical_flow.dense_flow(env.model, frames[t], frames[min(t + flow_steps, len(frames) - 1)],
                                     env_lib.REFERENCE_CAMERA, image_size, image_size)
      out.append({"family": family, "seed": seed, "step": t, "instruction": task.instruction,
                  "observation": episode["observations"][t], "true_flow": flow,
                  "true_flow_image": flow_image.flow_to_rgb(flow, max_magnitude)})
  finally:
    env.close()
  return out


def _policy_observation(policy: CheckpointPolicy, observation: dict) -> dict:
  """The env observation as the policy's input: as it is for runs with a data pipeline (their camera mapping
  reads the sim keys); for synthetic-data runs the cameras under the model's names and the state cut or
  zero-padded to the model's length (the head reads the VLM prefix only, never the state)."""
  if policy.preprocessor is not None:
    return observation
  state = np.zeros((policy.state_dim,), np.float32)
  raw = np.asarray(observation["state"], np.float32)[:policy.state_dim]
  state[:len(raw)] = raw
  return {**{cam: observation[SIM_CAMERA_KEYS[cam]] for cam in policy.camera_map}, "state": state}


def frame_figures(predicted: np.ndarray, true_image: np.ndarray, true_flow: np.ndarray,
                  max_magnitude: float) -> dict:
  """The figures of one frame: ``predicted`` float[S, S, 3] in about [-1, 1], ``true_image`` uint8[S, S, 3],
  ``true_flow`` float32[S, S, 2] pixels (module docstring)."""
  true01 = np.asarray(vae_lib.images_from_uint8(true_image))
  predicted = np.asarray(predicted, np.float32)
  flow = flow_image.rgb_to_flow((np.clip(predicted, -1.0, 1.0) + 1.0) / 2.0, max_magnitude)
  error = np.linalg.norm(flow - true_flow, axis=-1)
  length = np.linalg.norm(true_flow, axis=-1)
  moving = length > max_magnitude / 255.0
  return {"flow_epe_px": float(error.mean()), "zero_flow_epe_px": float(length.mean()),
          "flow_epe_moving_px": float(error[moving].mean()) if moving.any() else 0.0,
          "zero_flow_epe_moving_px": float(length[moving].mean()) if moving.any() else 0.0,
          "moving_pixel_fraction": float(moving.mean()),
          "image_l1": float(np.abs(predicted - true01).mean()),
          "image_mse": float(np.square(predicted - true01).mean())}


def report(policy: CheckpointPolicy, out_dir: str, *, suite: str = "tabletop4", num_frames: int = 4,
           seed: int = 0, num_steps: int | None = None, seed_offset: int = tasks.EVAL_SEED_OFFSET) -> dict:
  """Writes the PNG, NPZ and JSON (module docstring) of ``policy`` into ``out_dir``; returns the JSON dict."""
  if "reconstruct_motion_image" not in policy.lib.methods:
    raise ValueError(f"model {policy.lib.name!r} has no reconstruct_motion_image (no motion-image head)")
  if not (policy.model_cfg.get("motion_image", None) is not None and bool(policy.model_cfg.motion_image.enabled)):
    raise ValueError("the checkpoint's model has no motion-image head (config field model.motion_image.enabled "
                     "is False)")
  k, max_magnitude = flow_settings(policy)
  size = int(policy.image_size)
  frames = held_out_frames(suite=suite, num_frames=num_frames, image_size=size, flow_steps=k,
                           max_magnitude=max_magnitude, seed_offset=seed_offset)
  model = policy.model
  reconstruct = jax.jit(lambda p, b, r: model.apply({"params": p}, b, r, num_steps=num_steps,
                                                    method="reconstruct_motion_image"))
  rng = jax.random.key(seed)
  cameras, predicted_images, rows = [], [], []
  for i, frame in enumerate(frames):
    policy.reset(frame["instruction"])
    batch = policy.observation_batch(_policy_observation(policy, frame["observation"]))
    predicted = np.asarray(reconstruct(policy.params, batch, jax.random.fold_in(rng, i)))[0]
    if predicted.shape != (size, size, 3):
      raise ValueError(f"reconstruct_motion_image gave {predicted.shape}; expected ({size}, {size}, 3) (the "
                       "model's image_size)")
    figures = frame_figures(predicted, frame["true_flow_image"], frame["true_flow"], max_magnitude)
    rows.append({key: frame[key] for key in ("family", "seed", "step", "instruction")} | figures)
    cameras.append(np.asarray(frame["observation"]["image_0"], np.uint8))
    predicted_images.append(np.asarray(vae_lib.images_to_uint8(predicted)))
  os.makedirs(out_dir, exist_ok=True)
  true_images = np.stack([f["true_flow_image"] for f in frames])
  np.savez(os.path.join(out_dir, NPZ), camera=np.stack(cameras), true_flow_image=true_images,
           predicted_flow_image=np.stack(predicted_images), true_flow=np.stack([f["true_flow"] for f in frames]))
  png = plots.image_rows(
      {f"{r['family']} {r['seed']} t={r['step']}": np.stack([c, t, p])
       for r, c, t, p in zip(rows, cameras, true_images, predicted_images)},
      os.path.join(out_dir, PNG), title="camera image_0 | true flow image | predicted flow image")
  keys = [k_ for k_ in rows[0] if k_ not in ("family", "seed", "step", "instruction")]
  result = {"checkpoint": policy.checkpoint_dir, "step": policy.step, "params": policy.params_key,
            "suite": suite, "frames": rows, "mean": {key: float(np.mean([r[key] for r in rows])) for key in keys},
            "flow_steps": k, "flow_max_magnitude_px": max_magnitude, "image_size": size,
            "reconstruction_steps": int(policy.model_cfg.motion_image.reconstruction_steps
                                        if num_steps is None else num_steps),
            "columns": ["camera image_0", "true flow image", "predicted flow image"], "png": png,
            "npz": os.path.join(out_dir, NPZ)}
  with open(os.path.join(out_dir, JSON), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="the run's workdir or its checkpoints directory")
  p.add_argument("--out", required=True, help="directory for the PNG, NPZ and JSON")
  p.add_argument("--frames", type=int, default=4, help="held-out frames (one episode each)")
  p.add_argument("--suite", default="tabletop4", choices=sorted(tasks.SUITES))
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--num-steps", type=int, default=None, help="Euler steps (default: "
                 "model.motion_image.reconstruction_steps)")
  p.add_argument("--seed", type=int, default=0, help="seed of the head's noise")
  p.add_argument("--seed-offset", type=int, default=tasks.EVAL_SEED_OFFSET, help="first task seed")
  args = p.parse_args(argv)
  policy = CheckpointPolicy(args.checkpoint, step=args.step, training_parts=True)  # the head decodes
  result = report(policy, args.out, suite=args.suite, num_frames=args.frames, seed=args.seed,
                  num_steps=args.num_steps, seed_offset=args.seed_offset)
  print(json.dumps({k: result[k] for k in ("step", "mean", "png", "npz")}, indent=1))


if __name__ == "__main__":
  main()
