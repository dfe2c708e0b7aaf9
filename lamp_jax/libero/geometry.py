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

  def obstacles(self, exclude=()) -> np.ndarray:
    """Box geoms that are neither the robot's nor owned by an ``exclude`` object: int[N]."""
    return np.asarray([g for g in self.box_geoms
                       if int(g) not in self.robot_geoms and self.geom_owner.get(int(g)) not in set(exclude)], int)

  def collides(self, points, exclude=(), margin: float = 0.0) -> np.ndarray:
    """bool[P]: which points float[P, 3] lie inside (``margin``-grown) obstacle boxes (all but the robot's and
    the ``exclude`` objects')."""
    geoms = self.obstacles(exclude)
    return points_in_boxes(points, self.data.geom_xpos[geoms], self.data.geom_xmat[geoms].reshape(-1, 3, 3),
                           self.model.geom_size[geoms], margin)

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


# The Panda hand of robosuite's PandaGripper in the grip-site frame (x: the fingers' closing axis, z: from the
# hand toward the fingertips; metres), measured from its collision meshes: the hand's body is a box x +-0.10,
# y +-0.032, z -0.123..-0.031 (above the finger roots); each fully open finger spans |x| 0.039..0.065,
# y +-0.01, z -0.044..0.009 (its tip ~9 mm beyond the site).
HAND_BOX = ((-0.10, 0.10), (-0.032, 0.032), (-0.123, -0.031))
OPEN_FINGER_BOX = ((0.039, 0.065), (-0.01, 0.01), (-0.044, 0.009))


def box_grid(bounds, counts) -> np.ndarray:
  """Points float64[P, 3] on a regular grid over an axis-aligned box ``bounds`` ((lo, hi) per axis)."""
  axes = [np.linspace(lo, hi, int(n)) for (lo, hi), n in zip(bounds, counts)]
  return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def hand_points(pos, rot, open_fingers: bool = True, counts=(9, 3, 5)) -> np.ndarray:
  """Sample points float64[P, 3] (world) of the hand (and the open fingers) at grip-site pose ``pos`` float[3],
  ``rot`` float[3, 3] (columns: closing axis, normal, finger direction); ``counts``: grid of the hand's box."""
  local = [box_grid(HAND_BOX, counts)]
  if open_fingers:
    finger = box_grid(OPEN_FINGER_BOX, (2, 2, 4))
    local += [finger, finger * np.array([-1.0, 1.0, 1.0])]
  local = np.concatenate(local)
  return local @ np.asarray(rot, np.float64).T + np.asarray(pos, np.float64)


def points_in_boxes(points, centres, rots, half_sizes, margin: float = 0.0) -> np.ndarray:
  """bool[P]: whether each point float[P, 3] lies inside any of N oriented boxes (``centres`` float[N, 3],
  ``rots`` float[N, 3, 3] box-to-world, ``half_sizes`` float[N, 3]) grown by ``margin``."""
  points = np.asarray(points, np.float64).reshape(-1, 3)
  centres = np.asarray(centres, np.float64).reshape(-1, 3)
  if centres.shape[0] == 0:
    return np.zeros(points.shape[0], bool)
  rots = np.asarray(rots, np.float64).reshape(-1, 3, 3)
  local = np.einsum("nji,pnj->pni", rots, points[:, None, :] - centres[None])  # [P, N, 3]
  inside = np.all(np.abs(local) <= np.asarray(half_sizes, np.float64)[None] + margin, axis=-1)
  return inside.any(axis=1)


CLOSED_FINGER_BOX = ((-0.02, 0.02), (-0.01, 0.01), (-0.044, 0.009))  # both closed fingers (grip-site frame)


def holding_hand_points(pos, rot) -> np.ndarray:
  """Sample points float64[P, 3] of the hand and its closed fingers at grip-site pose ``pos``, ``rot`` (as
  ``hand_points``; the closed fingers: +-2 cm along the closing axis). The hand's grid is 2.5 x 3.2 x 1.8 cm:
  with a 5 mm collision margin it catches boxes thicker than 1.5 / 2.2 / 0.8 cm (a microwave's walls: >= 1.9)."""
  local = np.concatenate([box_grid(HAND_BOX, (9, 3, 6)), box_grid(CLOSED_FINGER_BOX, (3, 2, 4))])
  return local @ np.asarray(rot, np.float64).T + np.asarray(pos, np.float64)


def insertion_pose(centres, rots, half_sizes, points, lo, hi, directions, step: float = 0.01,
                   margin: float = 0.005, clear: float = 0.04):
  """Where a held object can be set down inside a roofed region (a microwave) and the way in.

  The object and the hand that holds it are the sample points ``points`` float[P, 3]: x, y relative to the
  object's body origin, z absolute at the height it is carried in (the caller puts it just above the region's
  floor). Candidate origins: a ``step`` grid over the region's horizontal box ``lo``..``hi`` float[2] (LIBERO's
  ``in`` tests the body origin against it). A candidate is free when no point lies in an obstacle box
  (``centres`` / ``rots`` / ``half_sizes`` as ``points_in_boxes``, grown by ``margin``: 5 mm); its way in along
  one of ``directions`` float[K, 2] (unit, pointing out of the region; the first that works wins) is free when
  the points are free at every ``step`` back along it until the innermost point is ``clear`` (4 cm) outside
  the region's box.

  Returns (origin xy float64[2], out direction float64[2], travel (m) from the origin to the outside point) of
  the free candidate deepest inside the region (the largest distance of the origin to the box's sides, then the
  nearest the region's centre), or None.
  """
  points = np.asarray(points, np.float64).reshape(-1, 3)
  lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
  axes = [np.arange(lo[i] + step / 2, hi[i], step) for i in range(2)]
  grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)  # [G, 2]
  if grid.size == 0:
    return None
  depth = np.minimum(grid - lo, hi - grid).min(axis=1)
  centre = 0.5 * (lo + hi)
  order = np.lexsort((np.linalg.norm(grid - centre, axis=1), -np.round(depth, 4)))

  def free(origins_xy) -> np.ndarray:  # bool[G]: all points of the object placed at each origin are free
    origins = np.concatenate([origins_xy, np.zeros((len(origins_xy), 1))], axis=1)
    pts = (points[None] + origins[:, None, :]).reshape(-1, 3)
    hit = points_in_boxes(pts, centres, rots, half_sizes, margin).reshape(len(origins_xy), -1)
    return ~hit.any(axis=1)

  for start in range(0, len(order), 48):  # deepest candidates first, a batch at a time
    batch = order[start:start + 48]
    for g in batch[free(grid[batch])]:
      result = _way_in(grid[g], directions, points, lo, hi, step, clear, free)
      if result is not None:
        return result
  return None


def _way_in(origin, directions, points, lo, hi, step, clear, free):
  for d in np.asarray(directions, np.float64).reshape(-1, 2):
    d = d / (np.linalg.norm(d) + 1e-12)
    # Travel until the innermost point lies `clear` beyond the region's box along d.
    face = float(np.where(d > 0, hi, lo) @ d)
    inner = float((origin @ d) + (points[:, :2] @ d).min())
    travel = max(face + clear - inner, 0.0)
    steps = np.arange(step, travel + step, step)
    if free(origin[None] + steps[:, None] * d[None]).all():
      return origin.copy(), d, float(travel)
  return None
