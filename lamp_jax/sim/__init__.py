"""The built-in MuJoCo tabletop benchmark: scene, tasks, scripted experts, exact scene-flow labels, RLDS export.

Modules:
  assets/tabletop.xml  the scene (table, kinematic arm + welded parallel gripper, drawer cabinet, free objects,
                       cameras 'front' (primary, scene-flow reference), 'side', 'wrist')
  env.py               ``TabletopEnv``: 7-D end-effector delta control at 10 Hz, observations, rendering
  cameras.py           pinhole camera model in the ``lamp_jax.specs`` (OpenCV / UVD) conventions
  tasks.py             task families (put_on_plate, stack, push, drawer), success predicates, suites, seed split
  experts.py           scripted closed-loop experts (optional action noise)
  scene_flow.py        exact 3D scene-flow labels by ray casting and rigid body tracking
  optical_flow.py      exact dense optical flow and an episode's flow images (encoding: lamp_jax.flow_image)
  rlds_export.py       episodes -> RLDS examples (layout in ``lamp_jax.specs``)
  generate.py          ``python -m lamp_jax.sim.generate`` (parallel, deterministic tfds writer)
  render_process.py    rendering in a child process when TensorFlow is loaded (Mesa + TF cannot share one)

Seeds: demonstrations use task seeds below ``tasks.DEMO_SEED_LIMIT`` (10**6); closed-loop evaluation
(``python -m lamp_jax.eval``) uses seeds from ``tasks.EVAL_SEED_OFFSET`` (10**6) upwards.

Headless rendering defaults to EGL (``MUJOCO_GL=egl``; set ``MUJOCO_GL=osmesa`` to use OSMesa instead). The
variable is read when mujoco's rendering context is created, so it is set here, before ``mujoco`` is imported.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
  os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
