"""Privileged geometry of a LIBERO scene from its MuJoCo model: the collision boxes of objects and fixtures,
their corners, and vertical ray casts (every LIBERO object's collision geometry is a set of boxes).

Axis letters: N boxes · P points. World frame: z up, metres.
"""

from __future__ import annotations

import mujoco
import numpy as np

_BOX = int(mujoco.mjtGeom.mjGEOM_BOX)
_UNIT_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)  # [8, 3]


class SceneGeometry:
  """Collision boxes grouped by the top-level body (object / fixture / robot) they belong to.

  Args:
    model, data: raw ``mujoco.MjModel`` / ``mujoco.MjData`` (robosuite: ``sim.model._model``, ``sim.data._data``).
    body_ids: {name: body id} of LIBERO's objects and fixtures (``env.obj_body_id``).
    robot_prefixes: body-name prefixes of the robot, its mount and gripper (never obstacles).
  """

  def __init__(self, model, data, body_ids: dict[str, int],
               robot_prefixes: tuple[str, ...] = ("robot", "gripper", "mount")):
    self.model, self.data = model, data
    self.body_ids = dict(body_ids)
    collide = (model.geom_contype != 0) | (model.geom_conaffinity != 0)
    self.box_geoms = np.nonzero(collide & (model.geom_type == _BOX))[0]
    owner = {bid: name for name, bid in self.body_ids.items()}
    self.geom_owner: dict[int, str] = {}
    self.robot_geoms = set()
    for g in range(model.ngeom):
      b = int(model.geom_bodyid[g])
      name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, b) or ""
      chain = b
      while chain > 0 and chain not in owner:
        chain = int(model.body_parentid[chain])
      if chain in owner:
        self.geom_owner[g] = owner[chain]
      root = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, int(model.body_rootid[b])) or ""
      if name.startswith(robot_prefixes) or root.startswith(robot_prefixes):
        self.robot_geoms.add(g)

  def geoms_of(self, name: str) -> np.ndarray:
    geoms = [g for g in self.box_geoms if self.geom_owner.get(int(g)) == name]
    if not geoms:
      raise ValueError(f"object {name!r} has no collision boxes in the MuJoCo model")
    return np.asarray(geoms)

  def geoms_of_body(self, body_id: int) -> np.ndarray:
    """Collision boxes on ``body_id`` and its descendants."""
    out = []
    for g in self.box_geoms:
      b = int(self.model.geom_bodyid[g])
      while b > 0 and b != body_id:
        b = int(self.model.body_parentid[b])
      if b == body_id:
        out.append(g)
    return np.asarray(out, int)

  def corners(self, geoms) -> np.ndarray:
    """World corners of the given boxes: float64[8 * N, 3]."""
    geoms = np.asarray(geoms, int)
    size = self.model.geom_size[geoms]  # [N, 3] half extents
    rot = self.data.geom_xmat[geoms].reshape(-1, 3, 3)
    local = _UNIT_CORNERS[None] * size[:, None, :]  # [N, 8, 3]
    world = np.einsum("nij,nkj->nki", rot, local) + self.data.geom_xpos[geoms][:, None, :]
    return world.reshape(-1, 3)

  def ray_down(self, xy, z_from: float, exclude=(), geoms=None) -> tuple[float, int]:
    """Highest box surface below (xy, z_from) among ``geoms`` (default: all but robot and ``exclude`` owners).

    Returns (z of the hit, geom id), or (-inf, -1) if nothing is below.
    """
    if geoms is None:
      geoms = [g for g in self.box_geoms
               if int(g) not in self.robot_geoms and self.geom_owner.get(int(g)) not in set(exclude)]
    geoms = np.asarray(geoms, int)
    if geoms.size == 0:
      return -np.inf, -1
    origin = np.array([xy[0], xy[1], z_from], np.float64)
    direction = np.array([0.0, 0.0, -1.0])
    rot = self.data.geom_xmat[geoms].reshape(-1, 3, 3)
    o = np.einsum("nji,nj->ni", rot, origin[None] - self.data.geom_xpos[geoms])  # ray in box frames
    d = np.einsum("nji,j->ni", rot, direction)
    size = self.model.geom_size[geoms]
    parallel = np.abs(d) < 1e-12
    safe_d = np.where(parallel, 1.0, d)
    t1 = np.where(parallel, -np.inf, (-size - o) / safe_d)
    t2 = np.where(parallel, np.inf, (size - o) / safe_d)
    t_near = np.max(np.minimum(t1, t2), axis=1)
    t_far = np.min(np.maximum(t1, t2), axis=1)
    outside_parallel = np.any(parallel & (np.abs(o) > size), axis=1)
    hit = (t_far >= np.maximum(t_near, 0.0)) & ~outside_parallel
    if not np.any(hit):
      return -np.inf, -1
    t = np.where(hit, np.maximum(t_near, 0.0), np.inf)
    i = int(np.argmin(t))
    return float(z_from - t[i]), int(geoms[i])
