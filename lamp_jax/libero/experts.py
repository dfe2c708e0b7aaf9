"""Privileged scripted experts for LIBERO's goal forms, driving the default OSC_POSE controller.

The expert reads the task's BDDL goal (``lamp_jax.libero.goals``) and the simulator state (body poses, the
collision boxes of every object, ``lamp_jax.libero.geometry``) and outputs LIBERO actions: float[7] =
(Δx, Δy, Δz, Δaxis-angle) in [-1, 1] (the controller scales them by 0.05 m and 0.5 rad per step, world frame) and
the gripper command (-1 open, +1 close). Goals of a conjunction are solved one after another.

Skills (one per goal form):
  * pick-and-place (``on`` / ``in``, ``PickPlace``): a top-down grasp chosen among candidates on the object's
    collision boxes by the free space around the open fingers and the hand (ray casts) — across the narrower
    principal side of solid objects (with yaw / shift variants), on the wall of hollow or wide ones (bowls, mugs,
    plates: a downward ray at the centre lands below the rim) — then lift to a height that clears everything under
    the straight carry path, carry so the object's body origin lands over the target (the target object's body
    origin for ``on``, a region's site otherwise), lower until the object's underside is just above the surface
    found by a ray cast, release, retreat. A grasp that did not lift the object is retried (twice). If
    something hangs over the lifted object (an opened drawer over the bowl's rim), it first slides out from
    under it ("slide", ``_escape_shift``) before rising.
    If something overhangs every top-down wall grasp (the opened top drawer over the bowl), the open hand goes
    down beside a grasp, shifted along the wall, slides in under the overhang, closes, and slides back out
    with the object before lifting it ("slidein", "slideout", ``_slide_in_grasp``; checked against the hand's
    boxes, ``geometry.hand_points``).
    If something under the straight way to the grasp stands higher than the hand would pass (a basket's rim
    after the first of two placements), the hand first rises and crosses over it ("rise", "cross").
    Wide objects that are not vessels (a moka pot) are grasped by a narrow part (the handle). Several objects
    ``on`` one region each get a slot in it (both moka pots on the stove).
    ``in`` a region under a roof (LIBERO-10's microwave: its top 14 cm over its floor, open on one side) goes in
    from the side ("enter", ``_plan_insertion``): of the grasps (the mug's handle too), the one whose hand stays
    outside when the object is set down deepest in the region, carried in 1.2 cm above the floor; after the
    release the hand backs out and, if the object still sticks out of the opening (the mug's handle), pushes it
    in with the closed fingers leaning into the push ("pushready", "pushin") so the door can shut.
  * ``on`` of a flat, wide object to a region of its own support (``PushFlat``): slide it (the plate).
  * ``open`` of a drawer (``PullDrawer``): grasp the handle from the front with the hand horizontal (rolled the
    way nearer the current hand), pull, back off and turn top-down again slowly.
  * ``close`` (drawer, microwave door) (``PushJoint``): push the moving part with the closed gripper along the
    direction it moves toward the goal range; a drawer with the fingers leaning into the push. The hand first
    rises if its straight way to the push passes low over something (the opened door's top edge).
  * ``turnon`` of the stove's knob (``TurnKnob``): grasp the knob's grip bar top-down and twist the hand.
``plan_order`` orders a conjunction: a closed drawer is opened before something is put in it, and ``close`` goes
after the placements into the same fixture (LIBERO-10: "put the bowl in the drawer and close it").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lamp_jax.libero import geometry as geometry_lib
from lamp_jax.libero import goals as goals_lib

POS_SCALE = 0.05  # m per unit action (OSC_POSE output_max)
ROT_SCALE = 0.5  # rad per unit action
OPEN, CLOSE = -1.0, 1.0


def _axis_angle(rot: np.ndarray) -> np.ndarray:
  """Rotation matrix -> axis-angle vector float64[3]."""
  cos = np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)
  angle = math.acos(cos)
  if angle < 1e-6:
    return np.zeros(3)
  vec = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
  if math.pi - angle < 1e-3:  # near pi: axis from the diagonal
    axis = np.sqrt(np.maximum((np.diag(rot) + 1.0) / 2.0, 0.0))
    axis = axis * np.sign(np.where(vec == 0, 1.0, vec))
    return axis / (np.linalg.norm(axis) + 1e-12) * angle
  return vec / (2.0 * math.sin(angle)) * angle


def _leaning(direction: np.ndarray, lean: float, home_yaw: float) -> np.ndarray:
  """Fingers down, tilted by ``lean`` rad toward the horizontal ``direction``, closing axis horizontal across it
  (of its two signs, the one nearer the top-down reset yaw)."""
  d = np.array([direction[0], direction[1], 0.0])
  d /= np.linalg.norm(d) + 1e-12
  z = math.cos(lean) * np.array([0.0, 0.0, -1.0]) + math.sin(lean) * d
  x = np.array([-d[1], d[0], 0.0])
  if x[:2] @ np.array([math.cos(home_yaw), math.sin(home_yaw)]) < 0:
    x = -x
  return np.stack([x, np.cross(z, x), z], axis=1)


def _top_down(yaw: float) -> np.ndarray:
  """Gripper orientation (site frame in world): z down, closing axis (site x) at ``yaw`` in the table plane."""
  x = np.array([math.cos(yaw), math.sin(yaw), 0.0])
  z = np.array([0.0, 0.0, -1.0])
  y = np.cross(z, x)
  return np.stack([x, y, z], axis=1)


class _Robot:
  """Reads the end effector and turns targets into OSC_POSE actions."""

  def __init__(self, env):
    self.env = env
    self.robot = env.robots[0]
    self.data = env.sim.data._data  # pylint: disable=protected-access
    self.site = self.robot.eef_site_id

  @property
  def pos(self) -> np.ndarray:
    return self.data.site_xpos[self.site].copy()

  @property
  def rot(self) -> np.ndarray:
    return self.data.site_xmat[self.site].reshape(3, 3).copy()

  @property
  def yaw(self) -> float:
    x = self.rot[:, 0]
    return math.atan2(x[1], x[0])

  def finger_gap(self) -> float:
    qpos = np.asarray(self.robot.sim.data.qpos[self.robot._ref_gripper_joint_pos_indexes])  # pylint: disable=protected-access
    return float(np.abs(qpos).sum())

  def action(self, target_pos, target_rot, gripper: float, max_speed: float = 1.0, gain: float = 12.0,
             max_turn: float = math.inf) -> np.ndarray:
    err = np.asarray(target_pos) - self.pos
    dpos = gain * err
    norm = np.linalg.norm(dpos)
    if norm > max_speed:
      dpos *= max_speed / norm
    drot = _axis_angle(np.asarray(target_rot) @ self.rot.T)
    drot = 0.8 * drot / ROT_SCALE
    turn = np.linalg.norm(drot)
    if turn > max_turn:  # slow turns keep the OSC's position tracking tight (big turns swing the arm)
      drot *= max_turn / turn
    drot = np.clip(drot, -1.0, 1.0)
    return np.concatenate([dpos, drot, [gripper]]).astype(np.float64)

  def rot_error(self, target_rot) -> float:
    return float(np.linalg.norm(_axis_angle(np.asarray(target_rot) @ self.rot.T)))


def _nearest_equivalent_yaw(yaw: float, reference: float) -> float:
  """yaw + k*pi closest to reference (the gripper is symmetric under a half turn)."""
  k = round((reference - yaw) / math.pi)
  return yaw + k * math.pi


class PickPlace:
  """Moves ``obj`` onto / into ``target`` (``on`` or ``in``)."""

  APPROACH_HEIGHT = 0.10
  MAX_RETRIES = 2

  SLOT_SPACING = 0.09  # m between objects bound for one region

  def __init__(self, expert: "LiberoExpert", obj: str, target: str, relation: str, slot: tuple[int, int] = (0, 1)):
    self.x = expert
    self.obj, self.target, self.relation = obj, target, relation
    self.slot = slot
    self.transit_z = None
    self.entry, self.lift_height = None, 0.10
    self.insert = None
    self.phase = "plan"
    self.retries = 0
    self.counter = 0
    self.done = False

  # -- planning -------------------------------------------------------------------------------------------

  def _clearance(self, point: np.ndarray, closing: np.ndarray, grasp_z: float) -> float:
    """Free height (m) around a top-down grasp: the open fingers (+-5 cm along ``closing``) need the space down
    to ``grasp_z``, the hand (~+-10 cm along ``closing``, ~3 cm above the grip site) the space above it.
    Negative: something of another object / fixture is in the way."""
    geo = self.x.geometry
    normal = np.array([-closing[1], closing[0]])
    free = np.inf
    for a in (-0.05, 0.05):
      for b in (-0.012, 0.012):
        z, _ = geo.ray_down(point + a * closing + b * normal, 3.0, exclude=(self.obj,))
        free = min(free, grasp_z - 0.005 - z)
    for a in np.linspace(-0.1, 0.1, 7):
      for b in (-0.03, 0.0, 0.03):
        z, _ = geo.ray_down(point + a * closing + b * normal, 3.0, exclude=(self.obj,))
        free = min(free, grasp_z + 0.025 - z)
    return float(free)

  def _plan_grasp(self):
    """Chooses a top-down grasp among candidates, by free space around the hand, then by simplicity."""
    geo, robot = self.x.geometry, self.x.robot
    geoms = geo.geoms_of(self.obj)
    corners = geo.corners(geoms)
    top, bottom = corners[:, 2].max(), corners[:, 2].min()
    body = self.x.body_pos(self.obj)
    centre = 0.5 * (corners[:, :2].min(0) + corners[:, :2].max(0))
    rel = corners[:, :2] - centre
    # Principal horizontal axes of the footprint.
    _, vecs = np.linalg.eigh(rel.T @ rel)
    ax, ay = vecs[:, 1], vecs[:, 0]  # long, short
    hit_z, _ = geo.ray_down(centre, top + 0.05, geoms=geoms)
    hollow = (top - hit_z) > 0.012 or np.ptp(rel @ ay) > 0.075
    deep = (top - hit_z) > 0.025  # a bowl / mug: its wall is the grasp
    to_robot = robot.pos[:2] - centre
    candidates = []  # (point, closing axis, grasp z, preference)
    if hollow and not deep:
      # Wide or shallow but not a vessel (a moka pot): a part narrow enough for the fingers (its handle).
      candidates = self._narrow_part_candidates(geoms, body)
    wall = hollow and not candidates
    if wall:
      # Grasp the wall; the fingers close across it, the closing axis is radial.
      for angle in np.linspace(0.0, 2 * math.pi, 12, endpoint=False):
        direction = np.array([math.cos(angle), math.sin(angle)])
        inner = None
        for r in np.linspace(0.0, 0.15, 76):
          z, _ = geo.ray_down(centre + r * direction, top + 0.05, geoms=geoms)
          if z > top - 0.02:
            inner = r
            break
        if inner is None:
          continue
        outer = inner
        for r in np.linspace(inner, inner + 0.05, 26):
          z, _ = geo.ray_down(centre + r * direction, top + 0.05, geoms=geoms)
          if z < top - 0.02:
            break
          outer = r
        point = centre + 0.5 * (inner + outer) * direction
        candidates.append((point, direction, max(top - 0.025, bottom + 0.012), float(direction @ to_robot)))
    else:
      height = top - bottom
      grasp_z = max(top - 0.035, bottom + 0.45 * height) if height > 0.04 else bottom + 0.5 * height + 0.005
      for base in (ay, ax):
        for offset in np.deg2rad([0.0, 20.0, -20.0, 40.0, -40.0]):
          c, s_ = math.cos(offset), math.sin(offset)
          closing = np.array([c * base[0] - s_ * base[1], s_ * base[0] + c * base[1]])
          width = float(np.ptp(rel @ closing))
          if width > 0.072:  # the fingers open to ~8 cm
            continue
          along = np.array([-closing[1], closing[0]])
          for shift in (0.0, 0.015, -0.015, 0.03, -0.03):
            if abs(shift) > 0.4 * np.ptp(rel @ along):
              continue
            candidates.append((centre + shift * along, closing, grasp_z, -abs(offset) - 3 * abs(shift) - 5 * width))
    if not candidates:
      raise RuntimeError(f"no top-down grasp of {self.obj!r} fits the gripper")
    scored = [(min(self._clearance(p, c, z), 0.02), pref, i) for i, (p, c, z, pref) in enumerate(candidates)]
    free, _, best = max(scored)
    self.start_obj_z = body[2]
    self.obj_top = top
    self.entry, self.lift_height = None, 0.10
    self.insert = None
    roofed = self._roofed_region()
    if roofed is not None:
      # Into a roofed region (the microwave) only through its side: the grasp must leave the hand outside.
      extra = self._narrow_part_candidates(geoms, body) if wall else []
      # Their 1 cm grid gives dozens of near-duplicates; each insertion search costs ~0.1-0.5 s: keep the best.
      extra = sorted(extra, key=lambda c: -c[3])[:self.INSERT_NARROW_CANDIDATES]
      choice = self._plan_insertion(candidates + extra, roofed, body, corners)
      if choice is not None:
        (point, closing, grasp_z), self.insert = choice
        yaw = _nearest_equivalent_yaw(math.atan2(closing[1], closing[0]), self.x.home_yaw)
        self.grasp_pos = np.array([point[0], point[1], grasp_z])
        self.grasp_rot = _top_down(yaw)
        return
    if free < 0 and wall:
      # Something overhangs every top-down wall grasp (LIBERO-Goal's opened top drawer reaches over the bowl):
      # enter one from the side, along the wall, under the overhang.
      slide = self._slide_in_grasp(candidates, corners)
      if slide is not None:
        self.grasp_pos, self.entry, self.grasp_rot, self.lift_height = slide
        return
    point, closing, grasp_z, _ = candidates[best]
    yaw = _nearest_equivalent_yaw(math.atan2(closing[1], closing[0]), self.x.home_yaw)
    self.grasp_pos = np.array([point[0], point[1], grasp_z])
    self.grasp_rot = _top_down(yaw)

  SLIDE_IN = (0.02, 0.03, 0.04, 0.05)  # m, tangential entries tried (the shortest that fits wins)
  LIFTS = (0.08, 0.06, 0.05, 0.04)  # m, heights tried for the first lift after a side entry

  def _slide_in_grasp(self, candidates, corners):
    """A top-down wall grasp entered from the side: (grasp float64[3], entry float64[3], orientation
    float64[3, 3], lift height), or None if none fits.

    The open hand goes down beside the grasp, shifted along the wall (its thin axis: the open fingers straddle
    the curved wall all the way), then slides in at the grasp height; after closing it slides back out with
    the object and lifts it. Requires, with the hand and open fingers as ``geometry.hand_points`` and >= 3 mm
    clearance from every box but the object's: the hand free at the grasp, along the slide and in the column
    above the entry; and after the slide back, the closed hand and the object's top free when lifted by one of
    ``LIFTS`` (the largest that fits). Candidates: each wall grasp at its height and 5 / 10 mm lower (more room
    under the overhang); the shortest slide wins, then the highest lift, then the candidates' preference."""
    geo = self.x.geometry
    up = np.array([0.0, 0.0, 1.0])
    lo, hi = corners[:, :2].min(0), corners[:, :2].max(0)
    bottom, top = corners[:, 2].min(), corners[:, 2].max()
    lid = np.stack(np.meshgrid(np.linspace(lo[0], hi[0], 5), np.linspace(lo[1], hi[1], 5)), -1).reshape(-1, 2)
    lid = np.concatenate([lid, np.full((len(lid), 1), top)], axis=1)

    def clear(points, margin=0.003) -> bool:
      return not geo.collides(points, exclude=(self.obj,), margin=margin).any()

    options = []
    for point, direction, grasp_z, pref in candidates:
      yaw = _nearest_equivalent_yaw(math.atan2(direction[1], direction[0]), self.x.home_yaw)
      rot = _top_down(yaw)
      tangent = rot[:, 1]
      for z in grasp_z - np.array([0.0, 0.005, 0.01]):
        if z < bottom + 0.012:
          break
        grasp = np.array([point[0], point[1], z])
        if not clear(geometry_lib.hand_points(grasp, rot)):
          continue
        for s in self.SLIDE_IN:
          for sign in (1.0, -1.0):
            entry = grasp + sign * s * tangent
            poses = [grasp + q * (entry - grasp) for q in np.linspace(0.25, 1.0, 4)]
            poses += [entry + k * up for k in (0.03, 0.06, 0.10, 0.15)]
            if not clear(np.concatenate([geometry_lib.hand_points(p, rot) for p in poses])):
              continue
            for lift in self.LIFTS:
              pts = np.concatenate([geometry_lib.hand_points(entry + lift * up, rot, open_fingers=False),
                                    lid + (entry - grasp) + lift * up])
              if clear(pts, 0.008):
                options.append((-s, lift, pref, tuple(grasp), tuple(entry), rot))
                break
    if not options:
      return None
    _, lift, _, grasp, entry, rot = max(options, key=lambda o: o[:3])
    return np.array(grasp), np.array(entry), rot, lift

  INSERT_CLEARANCE = 0.012  # m between the object's underside and a roofed region's floor on the way in
  INSERT_SEARCH = 0.3  # m around the region: obstacles farther away are ignored by the insertion search
  INSERT_NARROW_CANDIDATES = 16  # narrow-part grasps (a mug's handle) tried for an insertion, best first

  def _roofed_region(self) -> dict | None:
    """For ``in`` a fixture's region with a part of that fixture above it (a microwave's top), the region's
    horizontal box (LIBERO's ``in_box``: the site's axis-aligned half sizes), its floor (the first surface under
    the site's centre), the roof box's corners and the horizontal directions out of it (the site's axes, the
    one toward the robot first); None for a region open from above (a basket: the fixture's first surface from
    above is the floor)."""
    env, geo = self.x.env, self.x.geometry
    site = env.object_sites_dict.get(self.target)
    if self.relation != "in" or site is None or self.target in env.obj_body_id:
      return None
    pos = env.sim.data.get_site_xpos(self.target).copy()
    mat = env.sim.data.get_site_xmat(self.target).reshape(3, 3)
    half = np.abs(mat @ np.asarray(site.size, np.float64))
    floor, _ = geo.ray_down(pos[:2], pos[2], exclude=(self.obj,))
    # The roof is the region's own fixture's (objects already put in, a basket's first object, are not one).
    roof, roof_geom = geo.ray_down(pos[:2], 3.0, geoms=geo.geoms_of(site.parent_name))
    if not np.isfinite(floor) or roof < floor + 0.01:
      return None
    to_robot = self.x.data.xpos[self.x.robot_base][:2] - pos[:2]
    directions = [s * mat[:2, i] / (np.linalg.norm(mat[:2, i]) + 1e-12) for i in (0, 1) for s in (1.0, -1.0)]
    directions.sort(key=lambda d: -float(d @ to_robot))
    return {"lo": pos[:2] - half[:2], "hi": pos[:2] + half[:2], "floor": float(floor),
            "directions": np.asarray(directions), "roof": geo.corners([roof_geom])[:, :2]}

  def _plan_insertion(self, candidates, roofed, body, corners):
    """Of the top-down grasps ``candidates`` free at the pick (``_clearance`` >= 0), the one that lets the object
    go deepest into the roofed region with the hand outside (``geometry.insertion_pose``: the object carried
    in ``INSERT_CLEARANCE`` above the floor, the holding hand and closed fingers >= 5 mm from every box, the
    way in straight along one of the region's axes). Returns ((point float64[2], closing axis float64[2],
    grasp z), insertion dict) or None. A mug grasped by its rim has the hand over it, under the microwave's
    top; grasped by its handle (``_narrow_part_candidates``) the hand stays in front of the opening."""
    geo = self.x.geometry
    dz = roofed["floor"] + self.INSERT_CLEARANCE - corners[:, 2].min()
    obj_points = corners - np.array([body[0], body[1], -dz])
    geoms = geo.obstacles(exclude=(self.obj,))
    box_corners = geo.corners(geoms).reshape(-1, 8, 3)
    near = ((box_corners[..., :2].min(1) < roofed["hi"] + self.INSERT_SEARCH).all(1)
            & (box_corners[..., :2].max(1) > roofed["lo"] - self.INSERT_SEARCH).all(1))
    geoms = geoms[near]
    boxes = (geo.data.geom_xpos[geoms], geo.data.geom_xmat[geoms].reshape(-1, 3, 3), geo.model.geom_size[geoms])
    best = None
    for point, closing, grasp_z, pref in candidates:
      if self._clearance(point, closing, grasp_z) < 0:
        continue
      yaw = _nearest_equivalent_yaw(math.atan2(closing[1], closing[0]), self.x.home_yaw)
      hand = np.array([point[0] - body[0], point[1] - body[1], grasp_z + dz])
      points = np.concatenate([obj_points, geometry_lib.holding_hand_points(hand, _top_down(yaw))])
      found = geometry_lib.insertion_pose(*boxes, points, roofed["lo"], roofed["hi"], roofed["directions"])
      if found is None:
        continue
      origin, direction, travel = found
      depth = float(np.minimum(origin - roofed["lo"], roofed["hi"] - origin).min())
      key = (round(depth, 3), pref)
      if best is None or key > best[0]:
        best = (key, (point, closing, grasp_z), {"origin": origin, "dir": direction, "travel": travel,
                                                 "floor": roofed["floor"], "roof": roofed["roof"]})
    return None if best is None else best[1:]

  PUSH_LEAN = 0.6  # rad the fingers lean into the push-in: the hand's body stays back and low, under the roof
  PUSH_MARGIN = 0.006  # m the object's outermost point ends behind the roof's front edge (the door shuts there)
  FINGER_AHEAD = 0.012  # m from the grip site to the leaning closed fingers' front face, along the push

  def _excess(self) -> tuple[float, np.ndarray]:
    """(m the object's outermost point along the out direction lies beyond the roof's edge (the opening's plane:
    a microwave's door closes in front of it) less ``PUSH_MARGIN``, the object's box corners float64[8N, 3])."""
    geo, d = self.x.geometry, self.insert["dir"]
    corners = geo.corners(geo.geoms_of(self.obj))
    face = float((self.insert["roof"] @ d).max())
    return float((corners[:, :2] @ d).max() - (face - self.PUSH_MARGIN)), corners

  def _push_in_plan(self) -> bool:
    """After an insertion: whether part of the object still sticks out of the region (a mug set down by its
    handle: the handle, ~8.8 cm from the mug's axis, stays in front of the opening, where the door would hit
    it); if so, prepares to push it in by its outermost part with the closed fingers leaning ``PUSH_LEAN``
    into the push (a top-down hand there would hit the microwave's top)."""
    excess, corners = self._excess()
    if excess <= 0:
      return False
    d = self.insert["dir"]
    proj = corners[:, :2] @ d
    outer = corners[proj > proj.max() - 0.01]
    bottom = corners[:, 2].min()
    self.push_z = float(np.clip(outer[:, 2].mean(), bottom + 0.02, bottom + 0.06))
    self.push_rot = _leaning(-d, self.PUSH_LEAN, self.x.home_yaw)
    self.push_lateral = outer[:, :2].mean(0)
    return True

  def _push_in_act(self) -> np.ndarray:
    robot, d = self.x.robot, self.insert["dir"]
    excess, corners = self._excess()
    front = float((corners[:, :2] @ d).max())
    lateral = self.push_lateral - (self.push_lateral @ d) * d
    contact = lateral + front * d  # the outermost part, on the line the push started on
    if self.phase == "pushready":  # in front of it, turning the fingers into the push
      goal = np.append(contact + (self.FINGER_AHEAD + 0.04) * d, self.push_z)
      if (np.linalg.norm(robot.pos - goal) < 0.015 and robot.rot_error(self.push_rot) < 0.1) or self.counter > 60:
        self.phase, self.counter = "pushin", 0
      return robot.action(goal, self.push_rot, CLOSE, max_speed=0.6)
    # pushin: advance 2 cm ahead of the contact until the object is inside, then back out and rise
    if excess <= 0 or self.counter > 80:
      self.phase, self.counter = "withdraw", 0
      self.withdraw_goal = robot.pos + 0.06 * np.append(d, 0.0)
      self.insert = dict(self.insert, travel=0.0)
      self.push_done = True
    goal = np.append(contact + (self.FINGER_AHEAD - 0.02) * d, self.push_z)
    return robot.action(goal, self.push_rot, CLOSE, max_speed=0.3)

  def _narrow_part_candidates(self, geoms, body) -> list:
    """Top-down grasps across a narrow part of a wide object: for closing axes every 15 degrees and points on a
    1 cm grid over the footprint, the object's boxes that reach into the fingers' strip (+-1 cm across the closing
    axis, above the grasp height) must span < 6.5 cm along it, and the open fingers must clear the object's own
    boxes. Preference: the most material under the grasp height (a handle's long vertical part), then thin."""
    geo = self.x.geometry
    per_box = geo.corners(geoms).reshape(-1, 8, 3)  # [N, 8, 3]
    lo, hi = per_box[..., :2].min((0, 1)), per_box[..., :2].max((0, 1))
    box_top = per_box[..., 2].max(1)
    out = []
    for angle in np.deg2rad(np.arange(0.0, 180.0, 15.0)):
      closing = np.array([math.cos(angle), math.sin(angle)])
      normal = np.array([-closing[1], closing[0]])
      along = per_box[..., :2] @ closing  # [N, 8]
      across = per_box[..., :2] @ normal
      for px in np.arange(lo[0], hi[0] + 1e-9, 0.01):
        for py in np.arange(lo[1], hi[1] + 1e-9, 0.01):
          p = np.array([px, py])
          pa, pn = p @ closing, p @ normal
          in_strip = (across.max(1) > pn - 0.01) & (across.min(1) < pn + 0.01)
          if not np.any(in_strip):
            continue
          local_top = box_top[in_strip].max()
          grasp_z = local_top - 0.02
          near = in_strip & (box_top > grasp_z - 0.02)
          span_lo, span_hi = along[near].min(), along[near].max()
          if span_hi - span_lo > 0.065 or not span_lo - 0.005 < pa < span_hi + 0.005:
            continue
          depth = grasp_z - per_box[near][..., 2].min()  # material under the grasp height for the pads
          if depth < 0.015:
            continue
          centre_a = 0.5 * (span_lo + span_hi)
          point = p + (centre_a - pa) * closing
          # Open fingers at +-4.5 cm along the closing axis must not land on the object's other boxes.
          blocked = False
          for side in (-0.045, 0.045):
            for b in (-0.01, 0.0, 0.01):
              z, _ = geo.ray_down(point + side * closing + b * normal, local_top + 0.1, geoms=geoms)
              blocked |= z > grasp_z - 0.03
          if blocked:
            continue
          out.append((point, closing, grasp_z, float(min(depth, 0.04)) - 0.1 * (span_hi - span_lo)))
    return out

  def _slot_shift(self, grasp_offset: np.ndarray) -> np.ndarray:
    """Shift float64[2] from the region's centre to this object's slot (``goals.shared_target_slots``) for
    ``on`` a region: along the horizontal axis across the grasp offset (a handle's direction), so neighbours
    stand side by side. Objects ``in`` a container go to its centre (they may rest on one another)."""
    k, n = self.slot
    site = self.x.env.object_sites_dict.get(self.target)
    if n == 1 or self.relation != "on" or site is None or self.target in self.x.env.obj_body_id:
      return np.zeros(2)
    if np.linalg.norm(grasp_offset) > 0.01:
      axis = np.array([-grasp_offset[1], grasp_offset[0]]) / np.linalg.norm(grasp_offset)
    else:
      axis = np.array([1.0, 0.0])
    rot = self.x.env.sim.data.get_site_xmat(self.target).reshape(3, 3)[:2, :2]
    half = float(np.sum(np.abs(axis @ rot) * np.asarray(site.size[:2], np.float64)))
    return goals_lib.slot_offset(k, n, half, self.SLOT_SPACING) * axis

  def _above(self) -> np.ndarray:
    """The point above the grasp the hand descends from."""
    if self.entry is not None:  # above the side entry
      return self.entry + np.array([0, 0, self.APPROACH_HEIGHT])
    return self.grasp_pos + np.array([0, 0, max(self.APPROACH_HEIGHT, self.obj_top - self.grasp_pos[2] + 0.06)])

  def _transit_height(self, start: np.ndarray, end: np.ndarray) -> float | None:
    """Height at which the open hand crosses from ``start`` to ``end`` (float64[3]) above everything but the
    object under the straight path (+-5 cm around it; the fingertips hang ~6 cm below the grip site, 2 cm margin),
    or None if the straight path already clears it (a container's rim between two grasps, LIBERO-10)."""
    geo = self.x.geometry
    highest = -np.inf
    for s in np.linspace(0.0, 1.0, 12):
      p = start[:2] + s * (end[:2] - start[:2])
      for dx, dy in ((0, 0), (0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        highest = max(highest, geo.ray_down(p + np.array([dx, dy]), 3.0, exclude=(self.obj,))[0])
    needed = highest + 0.08
    if needed <= min(start[2], end[2]):
      return None
    return float(max(needed, end[2]))  # never below `end`: the object itself stands under it

  OVERHEAD = 0.25  # m above the lifted object that must be free before it rises

  def _escape_shift(self) -> np.ndarray | None:
    """Horizontal shift float64[2] that takes the lifted object out from under an overhang, or None if nothing
    stands above it (the usual case).

    LIBERO-Goal's "open the top drawer and put the bowl inside": the opened drawer reaches over the bowl's
    rim, and rising straight up knocks the bowl out of the fingers. Free means: no box in the column from
    the object's underside up to ``OVERHEAD`` above its top (over a 5 x 5 grid on its footprint) nor above
    the hand (the hand's line +-10 cm along the closing axis, from its underside ~4 cm above the grip site).
    The shortest shift (1 cm steps, 16 directions) whose column is free and whose straight way at the current
    height is free for the object wins; of equal ones, the one toward the place target."""
    geo, robot = self.x.geometry, self.x.robot
    corners = geo.corners(geo.geoms_of(self.obj))
    bottom, top = corners[:, 2].min(), corners[:, 2].max()
    lo, hi = corners[:, :2].min(0), corners[:, :2].max(0)
    footprint = np.stack(np.meshgrid(np.linspace(lo[0], hi[0], 5), np.linspace(lo[1], hi[1], 5)), -1).reshape(-1, 2)
    closing = self.grasp_rot[:2, 0]
    hand = robot.pos[:2] + np.linspace(-0.1, 0.1, 5)[:, None] * closing[None]
    z_hi = top + self.OVERHEAD

    def free(points, z_lo, z_from) -> bool:
      return all(geo.ray_down(p, z_from, exclude=(self.obj,))[0] < z_lo for p in points)

    def column_free(shift) -> bool:
      return free(footprint + shift, bottom - 0.005, z_hi) and free(hand + shift, robot.pos[2] + 0.04, z_hi)

    if column_free(np.zeros(2)):
      return None
    toward = self._target_xy() - robot.pos[:2]
    toward /= np.linalg.norm(toward) + 1e-9
    for distance in np.arange(0.01, 0.151, 0.01):
      options = []
      for angle in np.linspace(0.0, 2 * math.pi, 16, endpoint=False):
        u = np.array([math.cos(angle), math.sin(angle)])
        if not column_free(distance * u):
          continue
        if all(free(footprint + s * distance * u, bottom - 0.005, top + 0.005) for s in (0.25, 0.5, 0.75)):
          options.append((float(u @ toward), tuple(distance * u)))
      if options:
        return np.array(max(options)[1])
    return None  # boxed in: rise anyway

  def _target_xy(self) -> np.ndarray:
    if self.target in self.x.env.obj_body_id:
      return self.x.body_pos(self.target)[:2]
    return self.x.env.sim.data.get_site_xpos(self.target)[:2].copy()

  def _plan_place(self):
    """After the lift: carry height, place xy (with the measured grasp offset) and release height."""
    geo, robot = self.x.geometry, self.x.robot
    corners = geo.corners(geo.geoms_of(self.obj))
    obj_bottom = corners[:, 2].min()
    hang = robot.pos[2] - obj_bottom  # eef height above the object's underside
    offset = robot.pos[:2] - self.x.body_pos(self.obj)[:2]
    target_xy = self._target_xy() + self._slot_shift(offset)
    self.place_xy = target_xy + offset
    if self.insert is not None:  # carried to in front of the opening, lowered, then moved in horizontally
      self.enter_xy = self.insert["origin"] + offset
      self.place_xy = self.enter_xy + self.insert["travel"] * self.insert["dir"]
    # Highest obstacle under the carry path (object footprint ~ +-5 cm around the path).
    start = robot.pos[:2]
    highest = -np.inf
    for s in np.linspace(0.0, 1.0, 15):
      p = start + s * (self.place_xy - start)
      for dx, dy in ((0, 0), (0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        z, _ = geo.ray_down(p + np.array([dx, dy]) - offset * s, 3.0, exclude=(self.obj,))
        highest = max(highest, z)
    self.carry_z = max(robot.pos[2], highest + hang + 0.04)
    surface, _ = geo.ray_down(target_xy, 3.0, exclude=(self.obj,))
    self.release_z = surface + hang + (0.015 if self.relation == "on" else 0.02)
    if self.insert is not None:
      self.release_z = self.insert["floor"] + self.INSERT_CLEARANCE + hang

  # -- acting ---------------------------------------------------------------------------------------------

  def act(self) -> np.ndarray:
    robot = self.x.robot
    self.counter += 1
    if self.phase == "plan":
      try:
        self._plan_grasp()
      except RuntimeError:  # no grasp fits: give up on this goal (the episode fails, the caller goes on)
        self.phase = "failed"
        self.done = True
        return robot.action(robot.pos, robot.rot, OPEN)
      self.phase, self.counter = "approach", 0
      self.transit_z = self._transit_height(robot.pos, self._above())
      if self.transit_z is not None:
        self.phase = "rise"
    if self.phase == "rise":  # straight up to the transit height
      if robot.pos[2] > self.transit_z - 0.02 or self.counter > 40:
        self.phase, self.counter = "cross", 0
      return robot.action(np.array([robot.pos[0], robot.pos[1], self.transit_z]), self.grasp_rot, OPEN)
    if self.phase == "cross":  # over the obstacle at the transit height
      goal = np.append(self._above()[:2], self.transit_z)
      if np.linalg.norm(robot.pos[:2] - goal[:2]) < 0.02 or self.counter > 80:
        self.phase, self.counter = "approach", 0
      return robot.action(goal, self.grasp_rot, OPEN)
    if self.phase == "approach":
      above = self._above()
      if (np.linalg.norm(robot.pos - above) < 0.015 and robot.rot_error(self.grasp_rot) < 0.08) or self.counter > 120:
        self.phase, self.counter = "descend", 0
      return robot.action(above, self.grasp_rot, OPEN, max_speed=1.0)
    if self.phase == "descend":
      goal = self.grasp_pos if self.entry is None else self.entry
      if np.linalg.norm(robot.pos - goal) < 0.008 or self.counter > 40:
        self.phase, self.counter = ("close" if self.entry is None else "slidein"), 0
      return robot.action(goal, self.grasp_rot, OPEN, max_speed=0.7)
    if self.phase == "slidein":  # along the wall, under the overhang
      if np.linalg.norm(robot.pos - self.grasp_pos) < 0.006 or self.counter > 30:
        self.phase, self.counter = "close", 0
      return robot.action(self.grasp_pos, self.grasp_rot, OPEN, max_speed=0.4)
    if self.phase == "close":
      if self.counter >= 12:
        self.phase, self.counter = ("lift" if self.entry is None else "slideout"), 0
      return robot.action(self.grasp_pos, self.grasp_rot, CLOSE)
    if self.phase == "slideout":  # back the way in, the object just off its support
      goal = self.entry + np.array([0, 0, 0.005])
      if np.linalg.norm(robot.pos - goal) < 0.008 or self.counter > 30:
        self.phase, self.counter = "lift", 0
      return robot.action(goal, self.grasp_rot, CLOSE, max_speed=0.4)
    if self.phase == "lift":
      lift = (self.grasp_pos if self.entry is None else self.entry) + np.array([0, 0, self.lift_height])
      if robot.pos[2] > lift[2] - 0.01 or self.counter > 60:
        if self.x.body_pos(self.obj)[2] < self.start_obj_z + min(0.03, 0.6 * self.lift_height):  # the grasp failed
          self.retries += 1
          if self.retries > self.MAX_RETRIES:
            self.phase = "failed"
          else:
            self.phase, self.counter = "regrasp", 0
        else:
          shift = self._escape_shift()
          if shift is None:
            self._plan_place()
            self.phase, self.counter = "raise", 0
          else:
            self.slide_goal = np.append(robot.pos[:2] + shift, robot.pos[2])
            self.phase, self.counter = "slide", 0
      return robot.action(lift, self.grasp_rot, CLOSE, max_speed=0.6)
    if self.phase == "slide":  # out from under an overhang, at the lift height
      if np.linalg.norm(robot.pos - self.slide_goal) < 0.01 or self.counter > 40:
        self._plan_place()
        self.phase, self.counter = "raise", 0
      return robot.action(self.slide_goal, self.grasp_rot, CLOSE, max_speed=0.5)
    if self.phase == "regrasp":
      if self.counter > 10:
        self.phase, self.counter = "plan", 0
      return robot.action(robot.pos + np.array([0, 0, 0.02]), self.grasp_rot, OPEN)
    if self.phase == "raise":
      goal = np.array([robot.pos[0], robot.pos[1], self.carry_z])
      if robot.pos[2] > self.carry_z - 0.025 or self.counter > 60:
        self.phase, self.counter = "carry", 0
      return robot.action(goal, self.grasp_rot, CLOSE, max_speed=1.0)
    if self.phase == "carry":
      goal = np.array([self.place_xy[0], self.place_xy[1], self.carry_z])
      # The last centimetres are closed while lowering (its goal is the same xy): saves ~5 steps of slow
      # convergence (LIBERO-Goal's drawer-then-bowl task needs ~290 of its 300 steps).
      if np.linalg.norm(robot.pos - goal) < 0.02 or self.counter > 150:
        self.phase, self.counter = "lower", 0
      return robot.action(goal, self.grasp_rot, CLOSE, max_speed=1.0)
    if self.phase == "lower":
      goal = np.array([self.place_xy[0], self.place_xy[1], self.release_z])
      if np.linalg.norm(robot.pos - goal) < 0.008 or self.counter > 60:
        self.phase, self.counter = ("release" if self.insert is None else "enter"), 0
      speed = 1.0 if robot.pos[2] > self.release_z + 0.06 else 0.4
      return robot.action(goal, self.grasp_rot, CLOSE, max_speed=speed)
    if self.phase == "enter":  # straight in through the opening, just above the floor
      goal = np.array([self.enter_xy[0], self.enter_xy[1], self.release_z])
      if np.linalg.norm(robot.pos - goal) < 0.008 or self.counter > 60:
        self.phase, self.counter = "release", 0
      return robot.action(goal, self.grasp_rot, CLOSE, max_speed=0.4)
    if self.phase == "release":
      if self.counter >= 8:
        self.phase, self.counter = "retreat", 0
        self.retreat_goal = robot.pos + np.array([0, 0, 0.10])
        if self.insert is not None:
          self.phase = "withdraw"
          self.withdraw_goal = robot.pos + np.append(self.insert["travel"] * self.insert["dir"], 0.0)
      return robot.action(robot.pos, self.grasp_rot, OPEN)
    if self.phase == "withdraw":  # back out of the opening before rising
      if np.linalg.norm(robot.pos - self.withdraw_goal) < 0.01 or self.counter > 40:
        self.phase, self.counter = "retreat", 0
        self.retreat_goal = robot.pos + np.array([0, 0, 0.10])
        if not getattr(self, "push_done", False) and self._push_in_plan():
          self.phase = "pushready"
      return robot.action(self.withdraw_goal, self.grasp_rot, OPEN, max_speed=0.6)
    if self.phase in ("pushready", "pushin"):
      return self._push_in_act()
    if self.phase == "retreat":
      if robot.pos[2] > self.retreat_goal[2] - 0.02 or self.counter > 40:
        self.done = True
      return robot.action(self.retreat_goal, self.grasp_rot, OPEN, max_speed=0.6)
    # failed: hold still with the gripper open.
    self.done = True
    return robot.action(robot.pos, robot.rot, OPEN)


class PushFlat:
  """``on(obj, region)`` for a flat object too wide to grasp (a plate) whose target region lies on the surface
  it rests on: slide it there with the closed fingertips near the surface, steering along the line from the
  object to the region's centre (a lateral correction keeps the fingers on that line), until the goal holds;
  if the fingers lose the object they go around to it again (3 times at most).

  A dish (rim higher than its centre: LIBERO-Goal's plate) is pushed from inside, by the inner face of its
  leading rim (behind it stands the cabinet, and the outside of its trailing rim is out of reach); other flat
  objects from outside their trailing edge. The fingers lean away from the robot (``TILT``) so the wrist can
  reach low, far points. Known limit: a flared rim pushed from inside sometimes rides up on the fingers (7 or 8 of
  the 10 official initial states 0-9 succeed; the same state can flip between runs).
  """

  TILT = 0.5  # rad
  PUSH_HEIGHT = 0.010  # m, grip site above the object's underside (0.015: the fingertips landed on the plate's
  # flared rim and tilted it, "push the plate to the front of the stove" 4/10 on initial states 0-9; 0.010: 8/10;
  # 0.007 presses into the support and stalls, 4/10)

  def __init__(self, expert: "LiberoExpert", obj: str, target: str):
    self.x, self.obj, self.target = expert, obj, target
    self.phase, self.counter, self.done = "plan", 0, False
    self.pushes = 0

  def _rot(self, u: np.ndarray) -> np.ndarray:
    """Gripper orientation for pushing along the horizontal unit vector u: closing axis across u."""
    away = self.x.robot.pos[:2] - self.x.data.xpos[self.x.robot_base][:2]
    away = np.append(away / (np.linalg.norm(away) + 1e-9), 0.0)
    z = math.cos(self.TILT) * np.array([0.0, 0.0, -1.0]) + math.sin(self.TILT) * away
    x = np.array([-u[1], u[0], 0.0])
    x -= (x @ z) * z
    x /= np.linalg.norm(x) + 1e-9
    if x @ np.array([math.cos(self.x.home_yaw), math.sin(self.x.home_yaw), 0.0]) < 0:
      x = -x
    return np.stack([x, np.cross(z, x), z], axis=1)

  def _state(self):
    """(object centre xy, unit direction to the target, distance, object radius along that direction)."""
    geo = self.x.geometry
    corners = geo.corners(geo.geoms_of(self.obj))
    centre = 0.5 * (corners[:, :2].min(0) + corners[:, :2].max(0))
    goal = self.x.env.sim.data.get_site_xpos(self.target)[:2]
    delta = goal - self.x.body_pos(self.obj)[:2]
    dist = float(np.linalg.norm(delta))
    u = delta / (dist + 1e-9)
    radius = float(np.max((corners[:, :2] - centre) @ -u))
    return centre, u, dist, radius

  def _satisfied(self) -> bool:
    return bool(self.x.env._eval_predicate(["on", self.obj, self.target]))  # pylint: disable=protected-access

  def act(self) -> np.ndarray:
    robot = self.x.robot
    self.counter += 1
    if self.phase == "plan":
      corners = self.x.geometry.corners(self.x.geometry.geoms_of(self.obj))
      # Grip site PUSH_HEIGHT above the object's underside: the fingertips (~9 mm below the site) graze the
      # support, so they push the dish's rim at its foot instead of landing on its flared slope.
      self.z = corners[:, 2].min() + self.PUSH_HEIGHT
      centre = 0.5 * (corners[:, :2].min(0) + corners[:, :2].max(0))
      hit, _ = self.x.geometry.ray_down(centre, 3.0, geoms=self.x.geometry.geoms_of(self.obj))
      self.dish = bool(corners[:, 2].max() - hit > 0.006)
      self.rot = robot.rot
      self.phase, self.counter = "approach", 0
    if self._satisfied() and self.phase in ("approach", "descend", "push"):
      self.phase, self.counter = "retreat", 0
      self.retreat_goal = robot.pos + np.array([0.0, 0.0, 0.08])
    if self.phase in ("approach", "descend", "push"):
      centre, u, dist, radius = self._state()
      # A dish: fingers inside, just short of its leading rim; else just behind its trailing edge.
      back = -(radius - 0.035) if self.dish else radius + 0.02
      behind = np.append(centre - back * u, self.z)
      self.rot = self._rot(u)
    if self.phase == "approach":
      goal = behind + np.array([0.0, 0.0, 0.06])
      if np.linalg.norm(robot.pos - goal) < 0.015 or self.counter > 100:
        self.phase, self.counter = "descend", 0
      return robot.action(goal, self.rot, CLOSE, max_speed=1.0)
    if self.phase == "descend":
      if np.linalg.norm(robot.pos - behind) < 0.01 or self.counter > 40:
        self.phase, self.counter = "push", 0
      return robot.action(behind, self.rot, CLOSE, max_speed=0.6)
    if self.phase == "push":
      # Stay on the line behind the object (lateral correction) while advancing toward the target.
      contact = centre - (-(radius - 0.025) if self.dish else (radius + 0.005)) * u
      lateral = (contact - robot.pos[:2]) - ((contact - robot.pos[:2]) @ u) * u
      off_line = np.linalg.norm(lateral) > 0.025 or (robot.pos[:2] - contact) @ u > 0.03
      if off_line or self.counter > 150:  # lost the object: go around to its back again
        self.pushes += 1
        self.phase, self.counter = ("approach" if self.pushes <= 3 else "retreat"), 0
        self.retreat_goal = robot.pos + np.array([0.0, 0.0, 0.08])
        return robot.action(robot.pos + np.array([0.0, 0.0, 0.06]), self.rot, CLOSE)
      goal_xy = robot.pos[:2] + lateral + min(dist, 0.03) * u
      return robot.action(np.append(goal_xy, self.z), self.rot, CLOSE, max_speed=0.5)
    if self.phase == "retreat":
      if np.linalg.norm(robot.pos - self.retreat_goal) < 0.02 or self.counter > 30:
        self.done = True
      return robot.action(self.retreat_goal, self.rot, CLOSE, max_speed=1.0)
    self.done = True
    return robot.action(robot.pos, self.rot, CLOSE)


class PushJoint:
  """``close`` of an articulation (drawer, microwave door) by pushing it with the closed gripper.

  The joint's target comes from the object's ``default_close_ranges``. The contact point is on the moving body:
  for a slide joint the face that looks against the motion (a drawer's handle), for a hinge the point farthest
  from the axis (a door's free edge). Each step the fingertips aim a little past that point along the direction the point
  moves when the joint goes toward its target, until the goal predicate holds.
  """

  LEAN = 0.6  # rad the fingers lean into a drawer's push

  def __init__(self, expert: "LiberoExpert", name: str, kind: str):
    self.x, self.name, self.kind = expert, name, kind
    env = expert.env
    if name in env.object_sites_dict:
      site = env.object_sites_dict[name]
      self.joints = list(site.joints)
      self.owner = site.parent_name
    else:
      self.owner = name
      self.joints = list(env.get_object(name).joints)
    props = env.get_object(self.owner).object_properties["articulation"]
    if kind != "close":
      raise ValueError(f"PushJoint scripts 'close' only, got {kind!r}")
    ranges = [float(v) for v in props["default_close_ranges"]]
    self.target_q = float(np.mean(ranges))
    model = expert.model
    import mujoco  # pylint: disable=g-import-not-at-top

    self.jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, self.joints[0])
    if self.jid < 0:
      raise ValueError(f"joint {self.joints[0]!r} of {name!r} is not in the model")
    self.slide = int(model.jnt_type[self.jid]) == int(mujoco.mjtJoint.mjJNT_SLIDE)
    self.body = int(model.jnt_bodyid[self.jid])
    self.geoms = expert.geometry.geoms_of_body(self.body)
    self.phase, self.counter, self.done = "approach", 0, False
    self.rot = _top_down(expert.home_yaw)
    self.sign = 0.0

  def _q(self) -> float:
    return float(self.x.data.qpos[self.x.model.jnt_qposadr[self.jid]])

  def _satisfied(self) -> bool:
    state = self.x.env.object_states_dict[self.name]
    return bool(state.is_close())

  def _contact(self):
    """(contact point float64[3], unit horizontal push direction float64[3]) on corners chosen once."""
    data = self.x.data
    axis = data.xaxis[self.jid].copy()
    anchor = data.xanchor[self.jid].copy()
    self.sign = 1.0 if self.target_q > self._q() else -1.0
    corners = self.x.geometry.corners(self.geoms)
    if not hasattr(self, "_corner_ids"):
      robot_xy = self.x.robot.pos[:2]
      if self.slide:
        v = self.sign * axis
        proj = corners @ v
        ids = np.nonzero(proj < proj.min() + 0.01)[0]
      else:
        rel = corners - anchor
        dist = np.linalg.norm(rel - np.outer(rel @ axis, axis), axis=1)
        ids = np.nonzero(dist > dist.max() - 0.015)[0]
        # Several edges may be equally far: keep the one nearest the gripper (its corners at every height: a
        # 3-D cluster kept only the bottom or only the top corners of a microwave door's edge, whichever came
        # first, and the push went to the bottom, under the hand).
        nearest = ids[np.argmin(np.linalg.norm(corners[ids, :2] - robot_xy, axis=1))]
        ids = ids[np.linalg.norm(corners[ids, :2] - corners[nearest, :2], axis=1) < 0.025]
      self._corner_ids = ids
    pts = corners[self._corner_ids]
    point = pts.mean(axis=0)
    self._corner_mean_z = float(point[2])
    if self.slide:
      v = self.sign * axis
    else:
      v = self.sign * np.cross(axis, point - anchor)
    v = v.copy()
    v[2] = 0.0
    v /= np.linalg.norm(v) + 1e-9
    proj = pts @ v
    point = point + (proj.min() - point @ v) * v
    point[2] = max(point[2], pts[:, 2].max() - 0.015)
    return point, v

  CLEARANCE = 0.06  # m the grip site keeps above what stands under its way to the push (closed fingertips ~1 cm
  # below the site, the hand's +-10 cm span sampled +-5 cm around the path)

  def _rise_height(self, start: np.ndarray, end: np.ndarray) -> float | None:
    """Height to rise to before crossing from ``start`` to ``end`` (float64[3]) if the straight way passes less than
    ``CLEARANCE`` above any box (an opened microwave door after the mug went in), else None."""
    geo = self.x.geometry
    highest, blocked = -np.inf, False
    for s in np.linspace(0.0, 1.0, 12):
      p = start + s * (end - start)
      for dx, dy in ((0, 0), (0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        z, _ = geo.ray_down(p[:2] + np.array([dx, dy]), 3.0)
        highest = max(highest, z)
        blocked |= z > p[2] - self.CLEARANCE
    if not blocked:
      return None
    return float(max(end[2], highest + self.CLEARANCE))

  def act(self) -> np.ndarray:
    robot = self.x.robot
    self.counter += 1
    if self._satisfied() and self.phase in ("approach", "descend", "push"):
      self.phase, self.counter = "retreat", 0
      self.retreat_goal = robot.pos - 0.05 * getattr(self, "direction", np.zeros(3)) + np.array([0, 0, 0.08])
    if self.phase in ("approach", "descend", "push"):
      point, v = self._contact()
      self.direction = v
      start = point - 0.05 * v
      if self.slide:
        # A drawer is pushed by its handle with the fingertips leaning into the push: with the hand straight
        # down the forearm rides above the cabinet and hits its top before the drawer is shut (LIBERO-10's
        # bottom drawer).
        self.rot = _leaning(v, self.LEAN, self.x.home_yaw)
        point = point.copy()
        point[2] = self._corner_mean_z
        start = point - 0.06 * v
    if self.phase == "approach":
      above = start + np.array([0, 0, 0.10])
      if self.counter == 1:
        self.rise_z = self._rise_height(robot.pos, above)
      if self.rise_z is not None:  # first straight up: something stands under the straight way (the door)
        goal = np.array([robot.pos[0], robot.pos[1], self.rise_z])
        if robot.pos[2] > self.rise_z - 0.02 or self.counter > 40:
          self.rise_z = None
        return robot.action(goal, self.rot, CLOSE, max_speed=0.8)
      if np.linalg.norm(robot.pos - above) < 0.015 or self.counter > 120:
        self.phase, self.counter = "descend", 0
      return robot.action(above, self.rot, CLOSE, max_speed=0.8)
    if self.phase == "descend":
      if np.linalg.norm(robot.pos - start) < 0.01 or self.counter > 60:
        self.phase, self.counter = "push", 0
      return robot.action(start, self.rot, CLOSE, max_speed=0.5)
    if self.phase == "push":
      if self.counter > 200:
        self.phase, self.counter = "retreat", 0
        self.retreat_goal = robot.pos + np.array([0, 0, 0.08])
      goal = point + 0.03 * v
      goal[2] = start[2]
      return robot.action(goal, self.rot, CLOSE, max_speed=0.5, gain=8.0)
    if self.phase == "retreat":
      if np.linalg.norm(robot.pos - self.retreat_goal) < 0.02 or self.counter > 40:
        self.done = True
      return robot.action(self.retreat_goal, self.rot, CLOSE, max_speed=0.6)
    self.done = True
    return robot.action(robot.pos, self.rot, CLOSE)


class PullDrawer:
  """``open`` of a drawer (slide joint): grasp the handle from the front with the hand horizontal (fingers
  closing vertically around the handle bar), pull along the slide until the goal holds, release, back off."""

  RISE_TURN = 0.6  # cap of the rotation action while turning back top-down (0.3 took > 40 steps: "open the
  # top drawer and put the bowl inside" then ran out of LIBERO-Goal's 300 steps)

  def __init__(self, expert: "LiberoExpert", name: str):
    import mujoco  # pylint: disable=g-import-not-at-top

    self.x, self.name = expert, name
    env = expert.env
    if name in env.object_sites_dict:
      site = env.object_sites_dict[name]
      joints, owner = list(site.joints), site.parent_name
    else:
      joints, owner = list(env.get_object(name).joints), name
    props = env.get_object(owner).object_properties["articulation"]
    self.target_q = float(np.mean([float(v) for v in props["default_open_ranges"]]))
    model = expert.model
    self.jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, joints[0])
    if int(model.jnt_type[self.jid]) != int(mujoco.mjtJoint.mjJNT_SLIDE):
      raise ValueError(f"'open' of {name!r}: only drawers (slide joints) are scripted")
    self.geoms = expert.geometry.geoms_of_body(int(model.jnt_bodyid[self.jid]))
    self.phase, self.counter, self.done = "plan", 0, False

  def _q(self) -> float:
    return float(self.x.data.qpos[self.x.model.jnt_qposadr[self.jid]])

  def _plan(self):
    axis = self.x.data.xaxis[self.jid].copy()
    self.dir = (1.0 if self.target_q > self._q() else -1.0) * axis
    self.dir[2] = 0.0
    self.dir /= np.linalg.norm(self.dir) + 1e-9
    corners = self.x.geometry.corners(self.geoms)
    proj = corners @ self.dir
    handle = corners[proj > proj.max() - 0.01]
    self.handle = 0.5 * (handle.min(axis=0) + handle.max(axis=0))
    self.handle_front = proj.max()
    z = np.array([0.0, 0.0, 1.0])
    approach = -self.dir  # the gripper's z axis points into the drawer
    # Of the two hand rolls (closing axis up or down), the one nearer the current orientation: the other needs
    # a half turn of the wrist, which ends near its joint limit and cannot turn back to top-down afterwards.
    rolls = [np.stack([c, np.cross(approach, c), approach], axis=1) for c in (z, -z)]
    self.rot = min(rolls, key=self.x.robot.rot_error)
    # Grip site between the finger pads, ~1 cm behind the handle's front face.
    self.grasp = self.handle + (self.handle_front - 0.012 - self.handle @ self.dir) * self.dir
    self.pull_distance = abs(self.target_q - self._q()) + 0.03

  def _open(self) -> bool:
    return bool(self.x.env.object_states_dict[self.name].is_open())

  def act(self) -> np.ndarray:
    robot = self.x.robot
    self.counter += 1
    if self.phase == "plan":
      if self._open():
        self.done = True
        return robot.action(robot.pos, robot.rot, OPEN)
      self._plan()
      self.phase, self.counter = "lift", 0
    if self.phase == "lift":  # rise and turn the hand horizontal well in front of the handle
      goal = self.grasp + 0.12 * self.dir + np.array([0.0, 0.0, 0.06])
      if (np.linalg.norm(robot.pos - goal) < 0.03 and robot.rot_error(self.rot) < 0.15) or self.counter > 120:
        self.phase, self.counter = "align", 0
      return robot.action(goal, self.rot, OPEN, max_speed=0.8)
    if self.phase == "align":
      goal = self.grasp + 0.08 * self.dir
      if (np.linalg.norm(robot.pos - goal) < 0.012 and robot.rot_error(self.rot) < 0.07) or self.counter > 60:
        self.phase, self.counter = "insert", 0
      return robot.action(goal, self.rot, OPEN, max_speed=0.6)
    if self.phase == "insert":
      if np.linalg.norm(robot.pos - self.grasp) < 0.008 or self.counter > 50:
        self.phase, self.counter = "close", 0
      return robot.action(self.grasp, self.rot, OPEN, max_speed=0.6)
    if self.phase == "close":
      if self.counter >= 10:
        self.phase, self.counter = "pull", 0
        self.pull_goal = robot.pos + self.pull_distance * self.dir
      return robot.action(self.grasp, self.rot, CLOSE)
    if self.phase == "pull":
      if self._open() or self.counter > 100:
        self.phase, self.counter = "release", 0
      return robot.action(self.pull_goal, self.rot, CLOSE, max_speed=0.7)
    if self.phase == "release":
      if self.counter >= 6:
        self.phase, self.counter = "back", 0
        self.back_goal = robot.pos + 0.08 * self.dir
      return robot.action(robot.pos, self.rot, OPEN)
    if self.phase == "back":  # straight out of the handle, hand still horizontal
      if np.linalg.norm(robot.pos - self.back_goal) < 0.015 or self.counter > 30:
        self.phase, self.counter = "rise", 0
        self.rise_goal = self.back_goal + np.array([0.0, 0.0, 0.12])
      return robot.action(self.back_goal, self.rot, OPEN, max_speed=0.8)
    if self.phase == "rise":  # up into free space, turning the hand back toward top-down (the next skill ends the turn)
      home = _top_down(self.x.home_yaw)
      if (np.linalg.norm(robot.pos - self.rise_goal) < 0.05 and robot.rot_error(home) < 0.6) or self.counter > 40:
        self.done = True
      return robot.action(self.rise_goal, home, OPEN, max_speed=0.8, max_turn=self.RISE_TURN)
    self.done = True
    return robot.action(robot.pos, robot.rot, OPEN)


class TurnKnob:
  """``turnon`` of a rotary knob (a hinge with a vertical axis, the stove): grasp the knob's grip bar top-down
  at the knob's axis (fingers closing across the bar), twist the hand about the vertical by the angle the goal
  needs, release, rise.

  The grip bar is the knob's tall part (its collision boxes within 2.5 cm of the knob's top); its long
  horizontal axis comes from the principal axes of their footprint. Sweeping a fingertip against the pointer
  instead stalls: the closed fingers ride on the knob's rim and push almost radially.
  """

  OVERSHOOT = 0.35  # rad turned past the lower bound of the goal range
  TWIST_RATE = 0.06  # rad per step
  MAX_ATTEMPTS = 3

  def __init__(self, expert: "LiberoExpert", name: str):
    import mujoco  # pylint: disable=g-import-not-at-top

    self.x, self.name = expert, name
    env = expert.env
    obj = env.get_object(name)
    props = obj.object_properties["articulation"]
    self.on_q = float(min(float(v) for v in props["default_turnon_ranges"]))
    self.target_q = float(np.mean([float(v) for v in props["default_turnon_ranges"]]))
    model = expert.model
    self.jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, list(obj.joints)[0])
    self.geoms = expert.geometry.geoms_of_body(int(model.jnt_bodyid[self.jid]))
    self.phase, self.counter, self.done, self.attempts = "plan", 0, False, 0

  def _q(self) -> float:
    return float(self.x.data.qpos[self.x.model.jnt_qposadr[self.jid]])

  def _on(self) -> bool:
    return bool(self.x.env.object_states_dict[self.name].turn_on())

  def _plan(self):
    data = self.x.data
    axis, anchor = data.xaxis[self.jid].copy(), data.xanchor[self.jid].copy()
    sign = 1.0 if self.target_q > self._q() else -1.0
    if axis[2] < 0:  # yaw is measured counter-clockwise about +z
      sign = -sign
    corners = self.x.geometry.corners(self.geoms)
    top = corners[:, 2].max()
    tall = corners[corners[:, 2] > top - 0.025]
    self.closing = bar_closing_axis(tall[:, :2])
    # The hand turns by the joint's remaining travel to the goal range plus a margin (same sign as the joint).
    self.turn = sign * (max(self.on_q - self._q(), 0.0) + self.OVERSHOOT)
    yaw = _nearest_equivalent_yaw(math.atan2(self.closing[1], self.closing[0]), self.x.home_yaw - 0.5 * self.turn)
    self.yaw0 = yaw
    self.grasp = np.array([anchor[0], anchor[1], top - 0.015])
    self.twist = 0.0

  def act(self) -> np.ndarray:
    robot = self.x.robot
    self.counter += 1
    on = self._on()
    if self.phase == "plan":
      if on:
        self.done = True
        return robot.action(robot.pos, robot.rot, OPEN)
      self._plan()
      self.phase, self.counter = "approach", 0
    rot = _top_down(self.yaw0 + self.twist)
    if on and self.phase in ("approach", "descend", "close", "twist"):
      self.phase, self.counter = "release", 0
    if self.phase == "approach":
      goal = self.grasp + np.array([0.0, 0.0, 0.07])
      if (np.linalg.norm(robot.pos - goal) < 0.012 and robot.rot_error(rot) < 0.08) or self.counter > 100:
        self.phase, self.counter = "descend", 0
      return robot.action(goal, rot, OPEN, max_speed=1.0)
    if self.phase == "descend":
      if np.linalg.norm(robot.pos - self.grasp) < 0.006 or self.counter > 40:
        self.phase, self.counter = "close", 0
      return robot.action(self.grasp, rot, OPEN, max_speed=0.6)
    if self.phase == "close":
      if self.counter >= 10:
        self.phase, self.counter = "twist", 0
      return robot.action(self.grasp, rot, CLOSE)
    if self.phase == "twist":
      step = self.TWIST_RATE * np.sign(self.turn)
      self.twist = float(np.clip(self.twist + step, min(0.0, self.turn), max(0.0, self.turn)))
      if self.counter > 80:  # the knob did not follow: let go and try again from the current angle
        self.phase, self.counter = "release", 0
      return robot.action(self.grasp, _top_down(self.yaw0 + self.twist), CLOSE)
    if self.phase == "release":
      if self.counter >= 6:
        self.attempts += 1
        if not on and self.attempts <= self.MAX_ATTEMPTS:  # the knob slipped: grasp it again where it is now
          self.phase, self.counter = "plan", 0
        else:
          self.phase, self.counter = "retreat", 0
          self.retreat_goal = robot.pos + np.array([0.0, 0.0, 0.08])
      return robot.action(robot.pos, rot, OPEN)
    if self.phase == "retreat":
      if np.linalg.norm(robot.pos - self.retreat_goal) < 0.02 or self.counter > 30:
        self.done = True
      return robot.action(self.retreat_goal, rot, OPEN, max_speed=1.0)
    self.done = True
    return robot.action(robot.pos, rot, OPEN)


def bar_closing_axis(points: np.ndarray) -> np.ndarray:
  """Unit horizontal axis float64[2] across a bar: the minor principal axis of its footprint points float[P, 2]."""
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 2:
    raise ValueError(f"bar_closing_axis needs points float[P>=2, 2], got shape {points.shape}")
  rel = points - points.mean(axis=0)
  _, vecs = np.linalg.eigh(rel.T @ rel)
  return vecs[:, 0] / np.linalg.norm(vecs[:, 0])


SKILLS = {"on": PickPlace, "in": PickPlace, "close": lambda x, n: PushJoint(x, n, "close"),
          "turnon": TurnKnob, "open": PullDrawer}


def _region_owner(env, name: str) -> str:
  """The object a region belongs to (``wooden_cabinet_1_top_region`` -> ``wooden_cabinet_1``), else the name."""
  site = env.object_sites_dict.get(name)
  return site.parent_name if site is not None else name


def plan_order(goal: list, env) -> list:
  """Orders a conjunction for execution and adds the steps the goal implies.

  * ``in(obj, region)`` where the region is a closed drawer: ``open(region)`` first;
  * ``close(x)`` after every ``in`` / ``on`` into x or one of x's regions (put the bowl in the drawer, then
    close it), otherwise in the written order.
  """
  out = []
  for g in goal:
    if g.name == "in":
      site = env.object_sites_dict.get(g.args[1])
      if site is not None and getattr(site, "joints", None) and not env.object_states_dict[g.args[1]].is_open():
        out.append(goals_lib.Predicate("open", (g.args[1],)))
    out.append(g)
  closes = [g for g in out if g.name == "close"
            and any(p.name in ("in", "on") and _region_owner(env, p.args[1]) == _region_owner(env, g.args[0])
                    for p in out)]
  return [g for g in out if g not in closes] + closes


class LiberoExpert:
  """Scripted expert for one LIBERO episode. ``act()`` -> float64[7] LIBERO action (call after every step).

  Args:
    env: the LIBERO env (``ControlEnv`` / ``OffScreenRenderEnv``) or its inner robosuite env, already reset to
      its initial state.
    noise: std of Gaussian noise added to the translation / rotation components (demonstration diversity).
    seed: noise seed.
  """

  def __init__(self, env: Any, noise: float = 0.0, seed: int = 0):
    self.env = getattr(env, "env", env)
    self.rng = np.random.default_rng(seed)
    self.noise = float(noise)
    self.model = self.env.sim.model._model  # pylint: disable=protected-access
    self.data = self.env.sim.data._data  # pylint: disable=protected-access
    self.geometry = geometry_lib.SceneGeometry(self.model, self.data, self.env.obj_body_id)
    self.robot = _Robot(self.env)
    import mujoco  # pylint: disable=g-import-not-at-top

    self.robot_base = max(0, mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "robot0_base"))
    self.home_yaw = self.robot.yaw  # top-down at reset: yaws near it stay clear of the wrist's joint limits
    self.goals = plan_order(goals_lib.from_parsed(self.env.parsed_problem["goal_state"]), self.env)
    self.slots = goals_lib.shared_target_slots(self.goals)
    unsupported = [g for g in self.goals if g.name not in SKILLS]
    if unsupported:
      raise ValueError(f"no scripted skill for goal predicates {[str(g) for g in unsupported]}; supported: "
                       f"{sorted(SKILLS)}")
    self.index = 0
    self.skill = self._make_skill(self.goals[0])

  def _make_skill(self, goal: goals_lib.Predicate):
    if goal.name == "on" and self.pushable(goal.args[0], goal.args[1]):
      return PushFlat(self, goal.args[0], goal.args[1])
    if goal.name in ("on", "in"):
      return PickPlace(self, goal.args[0], goal.args[1], goal.name, slot=self.slots[self.index])
    return SKILLS[goal.name](self, *goal.args)

  def pushable(self, obj: str, target: str) -> bool:
    """A flat object (< 3 cm tall) too wide for the fingers (> 7.5 cm both ways) bound for a region of the
    surface it rests on: slid there (``PushFlat``) rather than picked."""
    site = self.env.object_sites_dict.get(target)
    if site is None:
      return False
    corners = self.geometry.corners(self.geometry.geoms_of(obj))
    rel = corners[:, :2] - corners[:, :2].mean(axis=0)
    _, vecs = np.linalg.eigh(rel.T @ rel)
    narrow = float(np.ptp(rel @ vecs[:, 0]))
    surface, _ = self.geometry.ray_down(self.env.sim.data.get_site_xpos(target)[:2], 3.0, exclude=(obj,))
    return bool(np.ptp(corners[:, 2]) < 0.03 and narrow > 0.075 and abs(surface - corners[:, 2].min()) < 0.01)

  def body_pos(self, name: str) -> np.ndarray:
    return self.data.xpos[self.env.obj_body_id[name]].copy()

  def body_mat(self, name: str) -> np.ndarray:
    return self.data.xmat[self.env.obj_body_id[name]].reshape(3, 3).copy()

  @property
  def phase(self) -> str:
    return f"{self.index}:{self.skill.phase}" if self.skill is not None else "idle"

  def act(self) -> np.ndarray:
    if self.skill is not None and self.skill.done and self.index + 1 < len(self.goals):
      self.index += 1
      self.skill = self._make_skill(self.goals[self.index])
    if self.skill is None or (self.skill.done and self.index + 1 >= len(self.goals)):
      action = self.robot.action(self.robot.pos, self.robot.rot, OPEN)
    else:
      action = self.skill.act()
    if self.noise > 0:
      action[:6] += self.rng.normal(0.0, self.noise, size=6)
    action[:6] = np.clip(action[:6], -1.0, 1.0)
    return action
