"""The tabletop MJCF model shipped with the package, and one offscreen render of it (shared by the environment
and its render subprocess, which must not import the environment)."""

from __future__ import annotations

from importlib import resources

import mujoco
import numpy as np


def asset_path(name: str = "tabletop.xml") -> str:
  """Path of an MJCF file shipped in ``lamp_jax/sim/assets``."""
  return str(resources.files("lamp_jax.sim").joinpath("assets", name))


def load_model() -> mujoco.MjModel:
  return mujoco.MjModel.from_xml_path(asset_path())



def render_with(renderer: mujoco.Renderer, data: mujoco.MjData, camera: str, kind: str) -> np.ndarray:
  """One render: 'rgb' uint8[H, W, 3] · 'depth' float32[H, W] z-depth (m) · 'segmentation' int32[H, W] geom id
  (-1 = background)."""
  if kind == "depth":
    renderer.enable_depth_rendering()
  elif kind == "segmentation":
    renderer.enable_segmentation_rendering()
  try:
    renderer.update_scene(data, camera)
    out = renderer.render()
  finally:
    renderer.disable_depth_rendering()
    renderer.disable_segmentation_rendering()
  if kind == "depth":
    return out.astype(np.float32)
  if kind == "segmentation":
    return np.where(out[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM), out[..., 0], -1).astype(np.int32)
  return out.copy()
