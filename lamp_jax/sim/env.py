"""The tabletop environment: a kinematic arm with a parallel gripper driven by 7-D end-effector deltas.

Control (``specs`` action convention): ``action = (dx, dy, dz, droll, dpitch, dyaw, gripper)``; position deltas
in metres (clipped to +-MAX_POS_DELTA per step), angle deltas in radians added to the hand's roll/pitch/yaw
(clipped to +-MAX_ROT_DELTA), gripper in [0, 1] (1 = open, sets the finger position targets). One control step is
``CONTROL_DT`` = 0.1 s (10 Hz) = 50 physics steps of 2 ms, over which the hand target is interpolated linearly;
the visual-only arm links are re-posed once per control step.

The hand is a mocap body (its origin is the tool centre point, TCP); the arm links are mocap bodies placed by
analytic 2-link inverse kinematics from the shoulder to the wrist so the robot looks like an arm in every camera
and its links move rigidly (the scene flow tracks them like any other body).

Observation dict (what policies receive)::

  image_0  uint8[H, W, 3]   'front' camera (primary, scene-flow reference)
  image_1  uint8[H, W, 3]   'side' camera
  image_2  uint8[H, W, 3]   'wrist' camera
  image_3  uint8[H, W, 3]   'top' camera (only when ``cameras`` includes 'top')
  depth_0  float32[H, W]    z-depth (m) of 'front' (only with ``render_depth=True``)
  state    float32[8]       TCP xyz (m) · hand roll/pitch/yaw (rad) · finger opening (m) · gripper command
  language_instruction str
"""

from __future__ import annotations

import dataclasses
from typing import Any

import mujoco
import numpy as np

from lamp_jax import specs
from lamp_jax.sim import cameras as cameras_lib  # also sets MUJOCO_GL (lamp_jax/sim/__init__.py)
from lamp_jax.sim import mjcf

CAMERA_NAMES = ("front", "side", "wrist", "top")  # image_0, image_1, image_2, image_3
DEFAULT_CAMERAS = ("front", "side", "wrist")  # rendered unless asked otherwise; image_3 only exists with 'top'
THIRD_PERSON_CAMERAS = ("front", "side", "top")  # fixed to the world (their poses can be randomised per episode)
REFERENCE_CAMERA = "front"
CONTROL_DT = 0.1
PHYSICS_DT = 0.002
SUBSTEPS = int(round(CONTROL_DT / PHYSICS_DT))
MAX_POS_DELTA = 0.04  # m per control step
MAX_ROT_DELTA = 0.25  # rad per control step
FINGER_MAX = 0.04  # opening of one finger (m)
WORKSPACE_LOW = np.array([-0.32, -0.38, 0.012])
WORKSPACE_HIGH = np.array([0.32, 0.38, 0.35])
RPY_LIMIT = np.array([0.6, 0.6, np.pi / 2 + 0.2])
HOME_TCP = np.array([-0.12, 0.0, 0.22])

# Kinematic arm geometry (must match assets/tabletop.xml).
_SHOULDER = np.array([-0.5, 0.0, 0.25])
_TURRET = np.array([-0.5, 0.0, 0.12])
_UPPER_LEN = 0.42
_FORE_LEN = 0.42
_WRIST_OFFSET = np.array([0.0, 0.0, 0.135])  # wrist point in the hand frame

OBJECT_NAMES = ("cube_0", "cube_1", "cube_2", "cylinder_0", "cylinder_1", "plate_0", "plate_1")
OBJECT_HALF_HEIGHT = {"cube": 0.02, "cylinder": 0.022, "plate": 0.006}
DRAWER_OPEN_MAX = 0.11
CAMERA_SEED_SALT = 0xCA3  # random camera poses of episode seed s come from default_rng([s, CAMERA_SEED_SALT])


def rpy_to_quat(rpy: np.ndarray) -> np.ndarray:
  """Extrinsic x-y-z (roll, pitch, yaw) -> MuJoCo quaternion (w, x, y, z); R = Rz(yaw) Ry(pitch) Rx(roll)."""
  r, p, y = (float(a) / 2.0 for a in rpy)
  cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
  return np.array([cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
                   cr * cp * sy - sr * sp * cy])


def _mat_to_quat(mat: np.ndarray) -> np.ndarray:
  quat = np.zeros(4)
  mujoco.mju_mat2Quat(quat, np.ascontiguousarray(mat, np.float64).reshape(9))
  return quat


def _frame_with_z(z_axis: np.ndarray, yaw: float) -> np.ndarray:
  """Rotation whose z axis is ``z_axis`` and whose y axis is horizontal, perpendicular to heading ``yaw``."""
  z = z_axis / np.linalg.norm(z_axis)
  y = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
  y = y - z * (y @ z)
  y /= np.linalg.norm(y)
  return np.stack([np.cross(y, z), y, z], axis=1)


@dataclasses.dataclass
class Frame:
  """The kinematic state of one control step, enough to recompute every body pose (``mj_kinematics``)."""

  qpos: np.ndarray
  mocap_pos: np.ndarray
  mocap_quat: np.ndarray


class TabletopEnv:
  """MuJoCo tabletop with language-conditioned tasks (see ``lamp_jax.sim.tasks``).

  Args:
    image_size: rendered height = width (pixels) of every camera.
    render: render camera images in observations (False gives state-only observations, for fast rollouts).
    render_depth: also return the reference camera's z-depth as ``depth_0``.
    cameras: which of CAMERA_NAMES to render; the others are zeros (image_3 is absent unless 'top' is named).
    render_backend: 'subprocess' (default; ``render_process``: a child process renders, safe whatever this
      process imports) or 'inprocess' (mujoco.Renderer here: faster, but this process must never import
      TensorFlow, before or after rendering; the dataset generator's workers use it).
  """

  def __init__(self, image_size: int = 64, render: bool = True, render_depth: bool = False,
               cameras: tuple[str, ...] = DEFAULT_CAMERAS, render_backend: str = "subprocess"):
    for name in cameras:
      if name not in CAMERA_NAMES:
        raise ValueError(f"unknown camera '{name}', expected one of {CAMERA_NAMES}")
    self.model = mjcf.load_model()
    self.data = mujoco.MjData(self.model)
    self.image_size = int(image_size)
    self.render_images = render
    self.render_depth = render_depth
    self.cameras = tuple(cameras)
    self.render_backend = render_backend
    if render_backend not in ("inprocess", "subprocess"):
      raise ValueError(f"render_backend must be 'inprocess' or 'subprocess', got {render_backend!r}")
    self._renderer = None
    self._render_process = None
    m = self.model
    self._body = {mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, i): i for i in range(m.nbody)}
    self._mocap = {name: int(m.body_mocapid[self._body[name]])
                   for name in ("link_turret", "link_upper_arm", "link_forearm", "hand_target")}
    self._hand_qadr = int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "hand")])
    self._finger_qadr = [int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)])
                         for n in ("finger_left", "finger_right")]
    self._drawer_qadr = int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "drawer")])
    self._obj_qadr = {n: int(m.jnt_qposadr[m.body_jntadr[self._body[n]]]) for n in OBJECT_NAMES}
    self._obj_geom = {n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, n) for n in OBJECT_NAMES}
    self._finger_geoms = {mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, n)
                          for n in ("finger_left", "finger_right", "palm")}
    self._camera_ids = {n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, n) for n in CAMERA_NAMES}
    self.nominal_camera_poses = {n: (m.cam_pos[i].copy(), m.cam_quat[i].copy())
                                 for n, i in self._camera_ids.items() if n in THIRD_PERSON_CAMERAS}
    self.task = None
    self.tcp = HOME_TCP.copy()
    self.rpy = np.zeros(3)
    self.gripper = 1.0
    self.steps = 0

  # ----------------------------------------------------------------------------------------------- episode
  def reset(self, task) -> dict[str, Any]:
    """Start an episode of ``task`` (a ``tasks.TaskInstance``); returns the first observation."""
    m, d = self.model, self.data
    mujoco.mj_resetData(m, d)
    self.task = task
    for name in OBJECT_NAMES:
      adr = self._obj_qadr[name]
      pose = task.object_poses.get(name)
      if pose is None:  # parked on the floor, out of view
        i = OBJECT_NAMES.index(name)
        d.qpos[adr:adr + 7] = [2.0 + 0.25 * i, 2.0, -0.75 + OBJECT_HALF_HEIGHT[name.split("_")[0]], 1, 0, 0, 0]
      else:
        x, y, yaw = pose
        kind = name.split("_")[0]
        d.qpos[adr:adr + 3] = [x, y, OBJECT_HALF_HEIGHT[kind] + 1e-4]
        d.qpos[adr + 3:adr + 7] = rpy_to_quat(np.array([0.0, 0.0, yaw]))
      # Parked objects get a fixed grey so nothing depends on earlier episodes.
      m.geom_rgba[self._obj_geom[name]] = task.colors.get(name, (0.5, 0.5, 0.5, 1.0))
    d.qpos[self._drawer_qadr] = task.drawer_opening
    for adr in self._finger_qadr:
      d.qpos[adr] = FINGER_MAX
    self.tcp = HOME_TCP.copy()
    self.rpy = np.zeros(3)
    self.gripper = 1.0
    self.steps = 0
    self._set_hand_pose(self.tcp, self.rpy)
    d.qpos[self._hand_qadr:self._hand_qadr + 3] = self.tcp
    d.qpos[self._hand_qadr + 3:self._hand_qadr + 7] = rpy_to_quat(self.rpy)
    d.ctrl[:] = FINGER_MAX
    for _ in range(25):  # let objects settle (50 ms)
      mujoco.mj_step(m, d)
    d.qvel[:] = 0.0
    mujoco.mj_forward(m, d)
    task.start = {name: self.body_pos(name) for name in task.object_poses}
    return self.observation()

  def step(self, action) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
    """Apply one 7-D action for CONTROL_DT. Returns (observation, reward, done, info)."""
    action = np.asarray(action, np.float64).reshape(-1)
    if action.shape != (specs.ACTION_DIM,) or not np.all(np.isfinite(action)):
      raise ValueError(f"action must be {specs.ACTION_DIM} finite numbers, got {action}")
    m, d = self.model, self.data
    target_tcp = np.clip(self.tcp + np.clip(action[:3], -MAX_POS_DELTA, MAX_POS_DELTA), WORKSPACE_LOW,
                         WORKSPACE_HIGH)
    target_rpy = np.clip(self.rpy + np.clip(action[3:6], -MAX_ROT_DELTA, MAX_ROT_DELTA), -RPY_LIMIT, RPY_LIMIT)
    self.gripper = float(np.clip(action[6], 0.0, 1.0))
    d.ctrl[:] = self.gripper * FINGER_MAX
    start_tcp, start_rpy = self.tcp, self.rpy
    hand = self._mocap["hand_target"]
    for i in range(SUBSTEPS):
      a = (i + 1) / SUBSTEPS
      d.mocap_pos[hand] = start_tcp + a * (target_tcp - start_tcp)
      d.mocap_quat[hand] = rpy_to_quat(start_rpy + a * (target_rpy - start_rpy))
      mujoco.mj_step(m, d)
    self.tcp, self.rpy = target_tcp, target_rpy
    self._set_hand_pose(self.tcp, self.rpy)  # the (visual-only) arm links follow at the control rate
    mujoco.mj_forward(m, d)
    self.steps += 1
    success = bool(self.task.success(self))
    done = success or self.steps >= self.task.max_steps
    return self.observation(), float(success), done, {"success": success}

  def teleport_hand(self, tcp, rpy, gripper: float) -> None:
    """Puts the hand at ``tcp`` / ``rpy`` (clipped to the workspace and RPY_LIMIT), the arm links after it and
    the fingers at ``gripper`` (0 closed .. 1 open) WITHOUT simulating: kinematics only, for still renders of
    the current scene (the grounding data of ``lamp_jax.sim.grounding``). Objects do not react; a later
    ``step`` starts from this pose."""
    m, d = self.model, self.data
    self.tcp = np.clip(np.asarray(tcp, np.float64), WORKSPACE_LOW, WORKSPACE_HIGH)
    self.rpy = np.clip(np.asarray(rpy, np.float64), -RPY_LIMIT, RPY_LIMIT)
    self.gripper = float(np.clip(gripper, 0.0, 1.0))
    self._set_hand_pose(self.tcp, self.rpy)
    d.qpos[self._hand_qadr:self._hand_qadr + 3] = self.tcp
    d.qpos[self._hand_qadr + 3:self._hand_qadr + 7] = rpy_to_quat(self.rpy)
    for adr in self._finger_qadr:
      d.qpos[adr] = self.gripper * FINGER_MAX
    d.ctrl[:] = self.gripper * FINGER_MAX
    mujoco.mj_forward(m, d)

  # ------------------------------------------------------------------------------------------ kinematics
  def _set_hand_pose(self, tcp: np.ndarray, rpy: np.ndarray) -> None:
    """Poses the hand target and the arm links (2-link IK from the shoulder to the wrist)."""
    d = self.data
    hand_quat = rpy_to_quat(rpy)
    hand_mat = np.zeros(9)
    mujoco.mju_quat2Mat(hand_mat, hand_quat)
    wrist = tcp + hand_mat.reshape(3, 3) @ _WRIST_OFFSET
    delta = wrist - _SHOULDER
    yaw = float(np.arctan2(delta[1], delta[0]))
    r, h = float(np.hypot(delta[0], delta[1])), float(delta[2])
    dist = float(np.clip(np.hypot(r, h), 1e-3, _UPPER_LEN + _FORE_LEN - 1e-6))
    cos_a = (_UPPER_LEN**2 + dist**2 - _FORE_LEN**2) / (2 * _UPPER_LEN * dist)
    elev = np.arctan2(h, r) + np.arccos(np.clip(cos_a, -1.0, 1.0))  # elbow up
    heading = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    elbow = _SHOULDER + _UPPER_LEN * (np.cos(elev) * heading + np.array([0.0, 0.0, np.sin(elev)]))
    turret_mat = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1.0]])
    poses = {
        "link_turret": (_TURRET, turret_mat),
        "link_upper_arm": (_SHOULDER, _frame_with_z(elbow - _SHOULDER, yaw)),
        "link_forearm": (elbow, _frame_with_z(wrist - elbow, yaw)),
    }
    for name, (pos, mat) in poses.items():
      d.mocap_pos[self._mocap[name]] = pos
      d.mocap_quat[self._mocap[name]] = _mat_to_quat(mat)
    d.mocap_pos[self._mocap["hand_target"]] = tcp
    d.mocap_quat[self._mocap["hand_target"]] = hand_quat

  def frame(self) -> Frame:
    """Snapshot of the kinematic state (for scene-flow labels and replays)."""
    return Frame(self.data.qpos.copy(), self.data.mocap_pos.copy(), self.data.mocap_quat.copy())

  # ---------------------------------------------------------------------------------------- privileged
  def body_id(self, name: str) -> int:
    return self._body[name]

  def body_pos(self, name: str) -> np.ndarray:
    return self.data.xpos[self._body[name]].copy()

  def body_yaw(self, name: str) -> float:
    mat = self.data.xmat[self._body[name]].reshape(3, 3)
    return float(np.arctan2(mat[1, 0], mat[0, 0]))

  def body_z_axis(self, name: str) -> np.ndarray:
    return self.data.xmat[self._body[name]].reshape(3, 3)[:, 2].copy()

  @property
  def drawer_opening(self) -> float:
    return float(self.data.qpos[self._drawer_qadr])

  @property
  def finger_opening(self) -> float:
    return float(sum(self.data.qpos[a] for a in self._finger_qadr))

  def gripper_touches(self, object_name: str) -> bool:
    """True when a finger or the palm is in contact with ``object_name``."""
    geom = self._obj_geom[object_name]
    d = self.data
    for i in range(d.ncon):
      g1, g2 = int(d.contact.geom1[i]), int(d.contact.geom2[i])
      if (g1 == geom and g2 in self._finger_geoms) or (g2 == geom and g1 in self._finger_geoms):
        return True
    return False

  def measured_tcp(self) -> tuple[np.ndarray, np.ndarray]:
    """Measured hand pose: TCP xyz (m) and roll/pitch/yaw (rad, R = Rz(yaw) Ry(pitch) Rx(roll))."""
    mat = self.data.xmat[self._body["hand"]].reshape(3, 3)
    rpy = np.array([np.arctan2(mat[2, 1], mat[2, 2]), np.arcsin(-np.clip(mat[2, 0], -1.0, 1.0)),
                    np.arctan2(mat[1, 0], mat[0, 0])])
    return self.data.xpos[self._body["hand"]].copy(), rpy

  def state(self) -> np.ndarray:
    """float32[8] (specs.SIM_STATE_DIM): measured TCP xyz · roll/pitch/yaw · finger opening · gripper command.

    (Actions integrate the commanded pose ``self.tcp`` / ``self.rpy``, which the welded hand tracks to ~1 mm.)
    """
    tcp, rpy = self.measured_tcp()
    return np.concatenate([tcp, rpy, [self.finger_opening, self.gripper]]).astype(np.float32)

  # ---------------------------------------------------------------------------------------- viewpoints
  def set_camera_poses(self, poses: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Poses third-person cameras: {name: (position float[3], MuJoCo quaternion float[4])} (world frame). They
    stay until set again (``reset`` keeps them); the renderer and the scene-flow labels see them."""
    for name, (position, quat) in poses.items():
      if name not in THIRD_PERSON_CAMERAS:
        raise ValueError(f"camera '{name}' cannot be posed: only {THIRD_PERSON_CAMERAS} are fixed to the world")
      quat = np.asarray(quat, np.float64)
      if abs(np.linalg.norm(quat) - 1.0) > 1e-9:
        raise ValueError(f"camera '{name}': the quaternion {quat} is not a unit quaternion")
      cam_id = self._camera_ids[name]
      self.model.cam_pos[cam_id] = position
      self.model.cam_quat[cam_id] = quat
    mujoco.mj_kinematics(self.model, self.data)
    mujoco.mj_camlight(self.model, self.data)

  def camera_poses(self, seed: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The nominal third-person poses (``seed`` None) or random ones drawn from ``seed``
    (``cameras.random_orbit_pose``, one independent draw per camera): a function of the seed alone."""
    if seed is None:
      return {n: (p.copy(), q.copy()) for n, (p, q) in self.nominal_camera_poses.items()}
    rng = np.random.default_rng([int(seed), CAMERA_SEED_SALT])
    return {n: cameras_lib.random_orbit_pose(p, q, rng) for n, (p, q) in self.nominal_camera_poses.items()}

  # ----------------------------------------------------------------------------------------- rendering
  def camera(self, name: str) -> cameras_lib.PinholeCamera:
    return cameras_lib.camera_from_data(self.model, self.data, name, self.image_size, self.image_size)

  def render_many(self, requests: list[tuple[str, str]]) -> list[np.ndarray]:
    """Renders [(camera, 'rgb' | 'depth' | 'segmentation'), ...] of the current state (see ``render_with``)."""
    for camera, kind in requests:
      if camera not in CAMERA_NAMES or kind not in ("rgb", "depth", "segmentation"):
        raise ValueError(f"bad render request ({camera!r}, {kind!r})")
    if self.render_backend == "subprocess":
      if self._render_process is None:
        from lamp_jax.sim import render_process  # pylint: disable=g-import-not-at-top
        self._render_process = render_process.RenderProcess(self.image_size, self.image_size)
      d = self.data
      return self._render_process.render(d.qpos, d.mocap_pos, d.mocap_quat, self.model.geom_rgba, requests,
                                         cam_pos=self.model.cam_pos, cam_quat=self.model.cam_quat)
    if self._renderer is None:
      self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
    return [mjcf.render_with(self._renderer, self.data, camera, kind) for camera, kind in requests]

  def render(self, camera: str, depth: bool = False, segmentation: bool = False) -> np.ndarray:
    """uint8[H, W, 3] RGB, or float32[H, W] z-depth (m), or int32[H, W] geom id (-1 = background)."""
    kind = "depth" if depth else "segmentation" if segmentation else "rgb"
    return self.render_many([(camera, kind)])[0]

  def observation(self) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "state": self.state(),
        "language_instruction": self.task.instruction if self.task is not None else "",
    }
    size = self.image_size
    requests = [(name, "rgb") for name in CAMERA_NAMES if self.render_images and name in self.cameras]
    if self.render_depth:
      requests.append((REFERENCE_CAMERA, "depth"))
    rendered = dict(zip(requests, self.render_many(requests))) if requests else {}
    for k, name in enumerate(CAMERA_NAMES):
      if name in DEFAULT_CAMERAS or name in self.cameras:
        obs[f"image_{k}"] = rendered.get((name, "rgb"), np.zeros((size, size, 3), np.uint8))
    if self.render_depth:
      obs["depth_0"] = rendered[(REFERENCE_CAMERA, "depth")]
    return obs

  def close(self) -> None:
    if self._renderer is not None:
      self._renderer.close()
      self._renderer = None
    if self._render_process is not None:
      self._render_process.close()
      self._render_process = None
