"""Write small RLDS datasets in the supported layouts (tests, benchmarks, examples). Not real robot data.

Every episode is a smooth random trajectory with distinct per-step states so that tests can locate a step from
its proprio; images are coloured squares whose position follows the state (JPEG-encoded by tfds).

CLI (a local Bridge-layout dataset for throughput measurements)::

    python -m lamp_jax.data.synthetic --layout=bridge_dataset --out=/tmp/lamp_bridge --episodes=120
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def _image(size, step, episode, channel_shift=0):
  h, w = size
  yy, xx = np.mgrid[0:h, 0:w]
  img = np.zeros((h, w, 3), np.uint8)
  img[..., 0] = (xx * 255 // max(1, w - 1)).astype(np.uint8)
  img[..., 1] = (yy * 255 // max(1, h - 1)).astype(np.uint8)
  img[..., 2] = (40 * episode + 13 * step + channel_shift) % 256
  cx, cy = (step * 5 + episode * 3) % w, (step * 3 + episode * 7) % h
  img[max(0, cy - h // 8):cy + h // 8, max(0, cx - w // 8):cx + w // 8] = 255
  return img


def _trajectory(rng, length, state_dim):
  state = np.cumsum(rng.normal(0, 0.02, (length + 1, state_dim)), axis=0).astype(np.float32)
  state += np.arange(length + 1, dtype=np.float32)[:, None] * 1e-3
  action = np.diff(state, axis=0)[:, :7].astype(np.float32)
  gripper = (np.arange(length) % 9 < 5).astype(np.float32)
  action[:, -1] = gripper
  return state[:-1], action


def bridge_features(image_size, num_cameras=4, state_dim=7, *, channels: int = 3, encoding_format: str = "jpeg"):
  """Features of the Bridge V2 layout (``channels`` / ``encoding_format`` of every camera image)."""
  import tensorflow_datasets as tfds

  obs = {f"image_{k}": tfds.features.Image(shape=tuple(image_size) + (channels,), encoding_format=encoding_format)
         for k in range(num_cameras)}
  obs["state"] = tfds.features.Tensor(shape=(state_dim,), dtype=np.float32)
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset({
          "observation": obs,
          "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
          "language_instruction": tfds.features.Text(),
          "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_,
          "reward": np.float32, "discount": np.float32,
      }),
      "episode_metadata": {**{f"has_image_{k}": np.bool_ for k in range(num_cameras)},
                           "file_path": tfds.features.Text(), "has_language": np.bool_},
  })


def bridge_episode(rng, episode, length, image_size, *, missing_cameras=(1, 2, 3), instruction="put the cube",
                   num_cameras=4, state_dim=7):
  state, action = _trajectory(rng, max(length, 1), max(state_dim, 7))
  state = state[:length, :state_dim]
  steps = []
  for t in range(length):
    obs = {f"image_{k}": (np.zeros(tuple(image_size) + (3,), np.uint8) if k in missing_cameras
                          else _image(image_size, t, episode, 60 * k)) for k in range(num_cameras)}
    obs["state"] = state[t]
    steps.append({"observation": obs, "action": action[t], "language_instruction": instruction,
                  "is_first": t == 0, "is_last": t == length - 1, "is_terminal": t == length - 1,
                  "reward": float(t == length - 1), "discount": 1.0})
  metadata = {f"has_image_{k}": k not in missing_cameras for k in range(num_cameras)}
  metadata.update(file_path=f"synthetic/bridge/{episode}", has_language=bool(instruction))
  return {"steps": steps, "episode_metadata": metadata}


def oxe_bridge_features(image_size):
  import tensorflow_datasets as tfds

  return tfds.features.FeaturesDict({"steps": tfds.features.Dataset({
      "observation": {"image": tfds.features.Image(shape=tuple(image_size) + (3,), encoding_format="jpeg"),
                      "state": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                      "natural_language_instruction": tfds.features.Text()},
      "action": {"world_vector": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                 "rotation_delta": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                 "open_gripper": np.bool_, "terminate_episode": np.float32},
      "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_, "reward": np.float32,
      "discount": np.float32})})


def oxe_bridge_episode(rng, episode, length, image_size, instruction="open the drawer"):
  state, action = _trajectory(rng, length, 7)
  steps = []
  for t in range(length):
    steps.append({
        "observation": {"image": _image(image_size, t, episode), "state": state[t],
                        "natural_language_instruction": instruction},
        "action": {"world_vector": action[t, :3], "rotation_delta": action[t, 3:6],
                   "open_gripper": bool(action[t, 6] > 0.5), "terminate_episode": float(t == length - 1)},
        "is_first": t == 0, "is_last": t == length - 1, "is_terminal": t == length - 1,
        "reward": 0.0, "discount": 1.0})
  return {"steps": steps}


def lamp_sim_features(image_size, k, t, *, optical_flow: bool = False, encoding_format: str = "jpeg"):
  """Features of the lamp_sim layout; ``optical_flow`` adds steps/observation/optical_flow (an Image).

  ``encoding_format`` ('jpeg' like the simulator, or lossless 'png' for exact pixel tests) applies to all images.
  """
  import tensorflow_datasets as tfds

  image = lambda: tfds.features.Image(shape=tuple(image_size) + (3,), encoding_format=encoding_format)  # noqa: E731
  observation = {"image_0": image(), "image_1": image(), "image_2": image(),
                 "state": tfds.features.Tensor(shape=(8,), dtype=np.float32)}
  if optical_flow:
    observation["optical_flow"] = image()
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset({
          "observation": observation,
          "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
          "language_instruction": tfds.features.Text(),
          "scene_flow": tfds.features.Tensor(shape=(k, t, 3), dtype=np.float32),
          "scene_flow_query": tfds.features.Tensor(shape=(k, 3), dtype=np.float32),
          "scene_flow_mask": tfds.features.Tensor(shape=(k, t), dtype=np.bool_),
          "scene_flow_query_mask": tfds.features.Tensor(shape=(k,), dtype=np.bool_),
          "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_,
          "reward": np.float32, "discount": np.float32}),
      "episode_metadata": {"file_path": tfds.features.Text(), "task_family": tfds.features.Text(),
                           "seed": np.int64, "success": np.bool_, "has_image_0": np.bool_,
                           "has_image_1": np.bool_, "has_image_2": np.bool_, "has_language": np.bool_},
  })


def optical_flow_image(image_size, step, episode):
  """The synthetic 'optical flow' image of a step: image_0's picture with its channels rotated (R, G, B) ->
  (B, R, G), so it has image_0's geometry but other values (tests check the same crop reached both)."""
  return _image(image_size, step, episode)[..., [2, 0, 1]]


def lamp_sim_episode(rng, episode, length, image_size, k, t_flow, instruction="stack the blocks", *,
                     optical_flow: bool = False):
  """One lamp_sim-layout episode; ``optical_flow`` adds observation/optical_flow (:func:`optical_flow_image`)."""
  from lamp_jax import specs

  state, action = _trajectory(rng, length, 8)
  query_uv = specs.grid_query_uv(k)
  steps = []
  for t in range(length):
    drift = 0.01 * (t + 1 + np.arange(t_flow, dtype=np.float32))[None, :, None]
    uv = np.clip(query_uv[:, None, :] + drift, 0.0, 1.2)
    flow = np.concatenate([uv, np.full((k, t_flow, 1), 0.5 + 0.01 * t, np.float32)], -1).astype(np.float32)
    query = np.concatenate([query_uv + 0.01 * t, np.full((k, 1), 0.5, np.float32)], -1).astype(np.float32)
    steps.append({
        "observation": {"image_0": _image(image_size, t, episode), "image_1": np.zeros(tuple(image_size) + (3,),
                                                                                        np.uint8),
                        "image_2": _image(image_size, t, episode, 90), "state": state[t]},
        "action": action[t], "language_instruction": instruction,
        "scene_flow": flow, "scene_flow_query": query, "scene_flow_mask": (uv < 1.0).all(-1),
        "scene_flow_query_mask": np.ones(k, bool),
        "is_first": t == 0, "is_last": t == length - 1, "is_terminal": t == length - 1,
        "reward": 0.0, "discount": 1.0})
    if optical_flow:
      steps[-1]["observation"]["optical_flow"] = optical_flow_image(image_size, t, episode)
  metadata = {"file_path": f"lamp_sim/test/family/{episode}", "task_family": "family", "seed": episode,
              "success": True, "has_image_0": True, "has_image_1": False, "has_image_2": True,
              "has_language": True}
  return {"steps": steps, "episode_metadata": metadata}


def write(name: str, out_dir: str, features, episodes, *, num_shards: int | None = None, val_episodes=None):
  """Store ``episodes`` (list of dicts) as a tfds dataset; returns the version directory."""
  import tensorflow_datasets as tfds

  splits = {"train": [(str(i), e) for i, e in enumerate(episodes)]}
  if val_episodes:
    splits["val"] = [(str(i), e) for i, e in enumerate(val_episodes)]
  builder = tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version="1.0.0", features=features, split_datasets=splits, data_dir=out_dir,
      download_config=tfds.download.DownloadConfig(num_shards=num_shards), disable_shuffling=True)
  return str(builder.data_dir)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--layout", default="bridge_dataset", choices=["bridge_dataset", "bridge", "lamp_sim"])
  parser.add_argument("--out", required=True, help="tfds data_dir to write into")
  parser.add_argument("--name", default="", help="builder name (default: synthetic_<layout>)")
  parser.add_argument("--episodes", type=int, default=100)
  parser.add_argument("--length", type=int, default=30, help="steps per episode (+-30%% random)")
  parser.add_argument("--image_size", type=int, default=256)
  parser.add_argument("--num_shards", type=int, default=8)
  parser.add_argument("--optical_flow", action="store_true",
                      help="lamp_sim layout: also write steps/observation/optical_flow images")
  args = parser.parse_args(argv)
  from tqdm import tqdm

  rng = np.random.default_rng(0)
  size = (args.image_size, args.image_size)
  lengths = rng.integers(max(3, int(args.length * 0.7)), int(args.length * 1.3) + 1, args.episodes)
  name = args.name or f"synthetic_{args.layout}"
  if args.layout == "bridge_dataset":
    features = bridge_features(size)
    episodes = (bridge_episode(rng, i, int(n), size, missing_cameras=(2, 3)) for i, n in enumerate(lengths))
  elif args.layout == "bridge":
    features = oxe_bridge_features(size)
    episodes = (oxe_bridge_episode(rng, i, int(n), size) for i, n in enumerate(lengths))
  else:
    features = lamp_sim_features(size, 16, 8, optical_flow=args.optical_flow)
    episodes = (lamp_sim_episode(rng, i, int(n), size, 16, 8, optical_flow=args.optical_flow)
                for i, n in enumerate(lengths))
  episodes = list(tqdm(episodes, total=args.episodes, desc="episodes"))
  path = write(name, os.path.expanduser(args.out), features, episodes, num_shards=args.num_shards)
  print(path)


if __name__ == "__main__":
  main()
