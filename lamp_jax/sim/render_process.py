"""Rendering in a child process, for processes that have TensorFlow loaded.

Mesa's software OpenGL (llvmpipe, behind both EGL and OSMesa) and TensorFlow cannot share a process here:
rendering after ``import tensorflow`` segfaults, and importing TensorFlow after rendering segfaults too. The
trainer (tf.data pipeline), evaluation and tests therefore render through this module: a
child ``python -m lamp_jax.sim.render_process`` that never imports TensorFlow receives the kinematic state
(qpos, mocap poses, geom colours), renders with ``mujoco.Renderer`` and sends the pixels back over a pipe
(pickle frames on stdin / stdout). The images are bit-identical to in-process rendering.

``TabletopEnv`` renders through this by default (``render_backend='subprocess'``); processes that never import
TensorFlow (the dataset generator's workers) can render in-process with ``render_backend='inprocess'``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np


class RenderProcess:
  """A child process that renders the tabletop model at ``height x width``."""

  def __init__(self, height: int, width: int):
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MUJOCO_GL", "egl")
    self._proc = subprocess.Popen([sys.executable, "-m", "lamp_jax.sim.render_process"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, env=env)
    self._call(("init", height, width))

  def _call(self, message):
    if self._proc is None:
      raise RuntimeError("the render process is closed")
    try:
      pickle.dump(message, self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
      self._proc.stdin.flush()
      status, payload = pickle.load(self._proc.stdout)
    except (BrokenPipeError, EOFError) as e:
      raise RuntimeError(f"the render process died (exit code {self._proc.poll()}); see its stderr") from e
    if status != "ok":
      raise RuntimeError(f"render process error: {payload}")
    return payload

  def render(self, qpos, mocap_pos, mocap_quat, geom_rgba, requests, cam_pos=None, cam_quat=None):
    """``requests``: list of (camera name, 'rgb' | 'depth' | 'segmentation'); ``cam_pos`` / ``cam_quat``: the
    model's camera poses (``model.cam_pos`` / ``cam_quat``) when they differ from the MJCF's. Returns the arrays."""
    cams = None if cam_pos is None else (np.asarray(cam_pos), np.asarray(cam_quat))
    return self._call(("render", np.asarray(qpos), np.asarray(mocap_pos), np.asarray(mocap_quat),
                       np.asarray(geom_rgba), list(requests), cams))

  def close(self) -> None:
    if self._proc is not None:
      try:
        self._call(("close",))
      except RuntimeError:
        pass
      self._proc.stdin.close()
      self._proc.stdout.close()
      self._proc.wait(timeout=30)
      self._proc = None

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


def _serve() -> None:
  import mujoco  # pylint: disable=g-import-not-at-top

  from lamp_jax.sim import mjcf  # pylint: disable=g-import-not-at-top

  stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
  model = data = renderer = None
  while True:
    try:
      message = pickle.load(stdin)
    except EOFError:
      break
    try:
      if message[0] == "init":
        model = mjcf.load_model()
        data = mujoco.MjData(model)
        renderer = mujoco.Renderer(model, message[1], message[2])
        reply = ("ok", None)
      elif message[0] == "render":
        _, qpos, mocap_pos, mocap_quat, geom_rgba, requests, cams = message
        data.qpos[:] = qpos
        data.mocap_pos[:] = mocap_pos
        data.mocap_quat[:] = mocap_quat
        model.geom_rgba[:] = geom_rgba
        if cams is not None:
          model.cam_pos[:], model.cam_quat[:] = cams
        mujoco.mj_kinematics(model, data)
        mujoco.mj_camlight(model, data)
        reply = ("ok", [mjcf.render_with(renderer, data, camera, kind) for camera, kind in requests])
      elif message[0] == "close":
        pickle.dump(("ok", None), stdout)
        stdout.flush()
        break
      else:
        reply = ("error", f"unknown message {message[0]!r}")
    except Exception as e:  # pylint: disable=broad-except
      reply = ("error", repr(e))
    pickle.dump(reply, stdout, protocol=pickle.HIGHEST_PROTOCOL)
    stdout.flush()
  if renderer is not None:
    renderer.close()


if __name__ == "__main__":
  _serve()
