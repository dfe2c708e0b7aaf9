r"""Grounding data: renders of random tabletop scenes labelled with where the instruction's objects are.

  python -m lamp_jax.sim.grounding --scenes=4000 --image-size=64 --out=FILE.npz

Free simulator labels for a grounding stage 0 (``lamp_jax.training.grounding``, PaliGemma's detection
pretraining in miniature): for a task instance of a ``tabletop4`` family, the instruction and the image position
of each ROLE the instruction names, in each camera:

  role 'object'      the thing to manipulate: put_on_plate's object, stack's top cube, push's object, the drawer's
                     handle (open / close the drawer)
  role 'receptacle'  where it goes: put_on_plate's plate, stack's bottom cube (none for push / drawer)

A scene is the task's initial layout (``TabletopEnv.reset``) with the hand teleported (``teleport_hand``, no
physics) to a random pose: half of the scenes above the object (xy within 10 cm, 4-25 cm high, as while
approaching or grasping it), half anywhere over the table, random yaw and gripper. So the wrist camera sees the
object from the distances of a demonstration, and the arm occludes parts of the front view as it does there.
Scenes use task seeds from ``GROUNDING_SEED_OFFSET`` (demonstrations: below ``tasks.DEMO_SEED_LIMIT``; evaluation:
``tasks.EVAL_SEED_OFFSET`` + episode index; the localization probe: 9e6 up), families cycling in suite order.

Arrays (N scenes, C cameras, R = len(ROLES)):
  images        uint8[N, C, H, W, 3]
  instructions  str[N]
  uv            float32[N, C, R, 2]   normalised image position of the role's centre (``specs`` UV convention:
                                      the camera model of ``cameras.py``); the drawer handle's centre point
  valid         bool[N, C, R]         the role exists and its centre projects inside the image, in front of the
                                      camera (occlusion is not tested: an occluded object keeps its label)
  family        int32[N]              index in ``tasks.suite_families('tabletop4')``

``load_or_render`` caches them as one ``.npz`` keyed by the settings (like the demonstrations).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import numpy as np

from lamp_jax.sim import tasks as tasks_lib

ROLES = ("object", "receptacle")
GROUNDING_SEED_OFFSET = 5_000_000
SUITE = "tabletop4"
FORMAT_VERSION = 1
# The drawer handle's centre in the drawer body's frame (assets/tabletop.xml: the 'handle' capsule).
HANDLE_OFFSET = np.array([0.0, -0.125, 0.065])


def role_positions(env, task: tasks_lib.TaskInstance) -> list[np.ndarray | None]:
  """World position float64[3] of each of ``ROLES`` in ``task`` (None where the family has no such role)."""
  if task.family == "drawer":
    return [env.body_pos("drawer") + HANDLE_OFFSET, None]
  receptacle = task.params.get("receptacle")
  return [env.body_pos(task.params["object"]), None if receptacle is None else env.body_pos(receptacle)]


def sample_hand_pose(rng: np.random.Generator, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
  """(tcp xyz, roll-pitch-yaw, gripper) of a random hand pose: above ``target`` or anywhere over the table."""
  if rng.random() < 0.5:
    tcp = np.array([*(target[:2] + rng.uniform(-0.1, 0.1, 2)), rng.uniform(0.04, 0.25)])
  else:
    tcp = rng.uniform([-0.25, -0.3, 0.04], [0.2, 0.2, 0.3])
  rpy = np.array([0.0, 0.0, rng.uniform(-np.pi / 4, np.pi / 4)])
  return tcp, rpy, float(rng.random() < 0.6)


def render_scenes(num_scenes: int, image_size: int, cameras: tuple[str, ...], *,
                  seed_offset: int = GROUNDING_SEED_OFFSET, progress: bool = True) -> dict[str, np.ndarray]:
  """Renders ``num_scenes`` labelled scenes (module docstring) from ``cameras`` (names of ``env.CAMERA_NAMES``)."""
  from lamp_jax.sim import env as env_lib  # pylint: disable=g-import-not-at-top

  for name in cameras:
    if name not in env_lib.CAMERA_NAMES:
      raise ValueError(f"unknown camera {name!r} for grounding data; cameras: {env_lib.CAMERA_NAMES}")
  families = tasks_lib.suite_families(SUITE)
  env = env_lib.TabletopEnv(image_size=image_size, cameras=tuple(cameras))
  n, c, r = int(num_scenes), len(cameras), len(ROLES)
  images = np.zeros((n, c, image_size, image_size, 3), np.uint8)
  uv = np.zeros((n, c, r, 2), np.float32)
  valid = np.zeros((n, c, r), bool)
  family_index = np.zeros((n,), np.int32)
  instructions = []
  iterator = range(n)
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    iterator = tqdm.tqdm(iterator, desc="grounding scenes", leave=False)
  try:
    for i in iterator:
      family_index[i] = i % len(families)
      task = tasks_lib.sample_task(families[family_index[i]], seed_offset + i)
      env.reset(task)
      positions = role_positions(env, task)
      env.teleport_hand(*sample_hand_pose(np.random.default_rng(seed_offset + i), positions[0]))
      observation = env.observation()
      instructions.append(task.instruction)
      for j, name in enumerate(cameras):
        images[i, j] = observation[f"image_{env_lib.CAMERA_NAMES.index(name)}"]
        camera = env.camera(name)
        for k, position in enumerate(positions):
          if position is None:
            continue
          u, v, depth = camera.project(position)
          uv[i, j, k] = (u, v)
          valid[i, j, k] = bool(depth > 0 and 0.0 <= u < 1.0 and 0.0 <= v < 1.0)
  finally:
    env.close()
  return {"images": images, "instructions": np.asarray(instructions), "uv": uv, "valid": valid,
          "family": family_index}


def cache_path(num_scenes: int, image_size: int, cameras: tuple[str, ...], seed_offset: int = GROUNDING_SEED_OFFSET,
               root: str | None = None) -> str:
  """The cache file of these settings (``LAMP_JAX_CACHE`` or ~/.cache/lamp_jax, then grounding/)."""
  key = json.dumps({"scenes": int(num_scenes), "size": int(image_size), "cameras": list(cameras),
                    "seed_offset": int(seed_offset), "format": FORMAT_VERSION}, sort_keys=True)
  root = root or os.environ.get("LAMP_JAX_CACHE", "") or os.path.join(os.path.expanduser("~"), ".cache", "lamp_jax")
  name = f"{SUITE}_{int(num_scenes)}x{int(image_size)}_{hashlib.sha1(key.encode()).hexdigest()[:8]}.npz"
  return os.path.join(root, "grounding", name)


def load(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as data:
    out = {k: data[k] for k in data.files}
  missing = {"images", "instructions", "uv", "valid", "family"} - set(out)
  if missing:
    raise ValueError(f"grounding data {path} lacks {sorted(missing)}")
  return out


def load_or_render(num_scenes: int, image_size: int, cameras: tuple[str, ...], *,
                   seed_offset: int = GROUNDING_SEED_OFFSET, root: str | None = None,
                   progress: bool = True) -> tuple[dict[str, np.ndarray], str]:
  """The cached scenes of these settings, rendered and written (atomically) first when absent."""
  path = cache_path(num_scenes, image_size, cameras, seed_offset, root)
  if not os.path.exists(path):
    start = time.time()
    data = render_scenes(num_scenes, image_size, cameras, seed_offset=seed_offset, progress=progress)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".partial.npz"
    np.savez(partial, **data)
    os.replace(partial, path)
    print(f"[grounding] rendered {num_scenes} scenes in {time.time() - start:.0f} s -> {path}", flush=True)
  return load(path), path


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--scenes", type=int, default=4000)
  p.add_argument("--image-size", type=int, default=64)
  p.add_argument("--cameras", default="front,wrist")
  p.add_argument("--seed-offset", type=int, default=GROUNDING_SEED_OFFSET)
  p.add_argument("--out", default="", help="output .npz (default: the cache entry of these settings)")
  args = p.parse_args(argv)
  cameras = tuple(args.cameras.split(","))
  if args.out:
    data = render_scenes(args.scenes, args.image_size, cameras, seed_offset=args.seed_offset)
    np.savez(args.out, **data)
    path = args.out
  else:
    data, path = load_or_render(args.scenes, args.image_size, cameras, seed_offset=args.seed_offset)
  print(json.dumps({"path": path, "scenes": int(len(data["images"])),
                    "valid_fraction": {f"{cam}/{role}": round(float(data["valid"][:, j, k].mean()), 4)
                                       for j, cam in enumerate(cameras) for k, role in enumerate(ROLES)}}))


if __name__ == "__main__":
  main()
