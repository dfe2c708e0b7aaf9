"""BDDL goal parsing of lamp_jax.libero.goals (pure Python: runs without LIBERO)."""

import pytest

from lamp_jax.libero import goals

BDDL = """(define (problem LIBERO_Kitchen_Tabletop_Manipulation)
  (:domain robosuite)
  (:objects akita_black_bowl_1 - akita_black_bowl  moka_pot_1 moka_pot_2 - moka_pot)
  (:init
    (On akita_black_bowl_1 main_table_bowl_region)
    (Open wooden_cabinet_1_top_region)
  )
  (:goal
    (And (On moka_pot_1 flat_stove_1_cook_region) (In akita_black_bowl_1 wooden_cabinet_1_top_region)
         (Turnon flat_stove_1) (Close wooden_cabinet_1_top_region))
  )
)
"""


def test_parse_bddl_goal_keeps_order_and_ignores_init():
  parsed = goals.parse_bddl_goal(BDDL)
  assert [str(p) for p in parsed] == [
      "(on moka_pot_1 flat_stove_1_cook_region)", "(in akita_black_bowl_1 wooden_cabinet_1_top_region)",
      "(turnon flat_stove_1)", "(close wooden_cabinet_1_top_region)"]


def test_from_parsed_matches_libero_parser_output():
  parsed = goals.from_parsed([["on", "akita_black_bowl_1", "plate_1"], ["Open", "wooden_cabinet_1_middle_region"]])
  assert parsed == [goals.Predicate("on", ("akita_black_bowl_1", "plate_1")),
                    goals.Predicate("open", ("wooden_cabinet_1_middle_region",))]


@pytest.mark.parametrize("goal, message", [
    ([["under", "a", "b"]], "not one of"),
    ([["on", "a"]], "takes 2 arguments"),
    ([], "empty goal"),
])
def test_invalid_goals_raise(goal, message):
  with pytest.raises(ValueError, match=message):
    goals.from_parsed(goal)


def test_bddl_without_goal_raises():
  with pytest.raises(ValueError, match="no \\(:goal"):
    goals.parse_bddl_goal("(define (problem x) (:init (On a b)))")


def test_shared_target_slots_number_objects_bound_for_one_target():
  goal = goals.parse_bddl_goal(
      "(:goal (And (On moka_pot_1 flat_stove_1_cook_region) (On moka_pot_2 flat_stove_1_cook_region)"
      " (Turnon flat_stove_1) (In butter_1 basket_1_contain_region)))")
  assert goals.shared_target_slots(goal) == [(0, 2), (1, 2), (0, 1), (0, 1)]


@pytest.mark.parametrize("n, half, spacing, expected", [
    (1, 0.075, 0.09, [0.0]),
    (2, 0.075, 0.09, [-0.045, 0.045]),  # the region holds the spacing
    (3, 0.031, 0.09, [-0.021, 0.0, 0.021]),  # squeezed to the region's half extent minus the margin
])
def test_slot_offset_centres_slots_inside_the_region(n, half, spacing, expected):
  got = [goals.slot_offset(k, n, half, spacing) for k in range(n)]
  assert got == pytest.approx(expected)
  assert all(abs(g) <= max(half - 0.01, 0.0) + 1e-12 for g in got)


def test_slot_offset_rejects_missing_slot():
  with pytest.raises(ValueError, match="slot 2 of 2"):
    goals.slot_offset(2, 2, 0.07, 0.09)


# -- pure helpers of the scripted experts (no LIBERO needed) ---------------------------------------------------


def test_bar_closing_axis_is_across_the_bar():
  import numpy as np

  from lamp_jax.libero import experts

  angle = 0.7
  along = np.array([np.cos(angle), np.sin(angle)])
  across = np.array([-along[1], along[0]])
  # Corners of a 9 cm x 2.5 cm bar (the stove knob's grip) at an odd position.
  points = np.array([0.31, -0.17]) + np.array([a * along + b * across for a in (-0.045, 0.045) for b in (-0.0125, 0.0125)])
  axis = experts.bar_closing_axis(points)
  assert abs(abs(axis @ across) - 1.0) < 1e-9
  with pytest.raises(ValueError, match="float\\[P>=2, 2\\]"):
    experts.bar_closing_axis(np.zeros((1, 2)))


@pytest.mark.parametrize("direction, lean", [((0.0, 1.0), 0.6), ((-0.6, 0.8), 0.3), ((1.0, 0.0), 0.0)])
def test_leaning_orientation_is_a_rotation_pointing_as_asked(direction, lean):
  import numpy as np

  from lamp_jax.libero import experts

  d = np.array([direction[0], direction[1], 0.0]) / np.linalg.norm(direction)
  rot = experts._leaning(d[:2], lean, home_yaw=1.57)  # pylint: disable=protected-access
  np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
  assert np.linalg.det(rot) == pytest.approx(1.0)
  z = rot[:, 2]  # the fingers' direction: down, leaning by `lean` toward d
  assert z[2] == pytest.approx(-np.cos(lean))
  assert z @ d == pytest.approx(np.sin(lean))
  assert rot[2, 0] == pytest.approx(0.0)  # closing axis horizontal
  assert rot[:2, 0] @ np.array([np.cos(1.57), np.sin(1.57)]) >= 0.0  # the sign nearer the reset yaw


class _FakeSite:

  def __init__(self, parent_name, joints=()):
    self.parent_name, self.joints = parent_name, list(joints)


class _FakeState:

  def __init__(self, is_open):
    self._open = is_open

  def is_open(self):
    return self._open


class _FakeEnv:
  """The two dicts ``plan_order`` reads from a LIBERO env."""

  def __init__(self, drawer_open):
    self.object_sites_dict = {"white_cabinet_1_bottom_region": _FakeSite("white_cabinet_1", ["bottom_level"]),
                              "basket_1_contain_region": _FakeSite("basket_1")}
    self.object_states_dict = {"white_cabinet_1_bottom_region": _FakeState(drawer_open),
                               "basket_1_contain_region": _FakeState(False)}


@pytest.mark.parametrize("drawer_open", [False, True])
def test_plan_order_opens_a_closed_drawer_first_and_closes_it_last(drawer_open):
  from lamp_jax.libero import experts

  goal = goals.parse_bddl_goal("(:goal (And (Close white_cabinet_1_bottom_region)"
                               " (In akita_black_bowl_1 white_cabinet_1_bottom_region)"
                               " (In butter_1 basket_1_contain_region)))")
  order = [str(p) for p in experts.plan_order(goal, _FakeEnv(drawer_open))]
  expected = ["(in akita_black_bowl_1 white_cabinet_1_bottom_region)", "(in butter_1 basket_1_contain_region)",
              "(close white_cabinet_1_bottom_region)"]
  if not drawer_open:
    expected.insert(0, "(open white_cabinet_1_bottom_region)")
  assert order == expected


def test_points_in_boxes_respects_orientation_and_margin():
  import numpy as np

  from lamp_jax.libero import geometry

  c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
  rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # a 10 x 2 x 2 cm box turned 45 deg about z
  centres, half = np.array([[1.0, 2.0, 0.5]]), np.array([[0.05, 0.01, 0.01]])
  points = np.array([[1.0 + 0.04 * c, 2.0 + 0.04 * s, 0.5],  # along the long axis: inside
                     [1.04, 2.0, 0.5],  # along world x: outside the turned box
                     [1.0, 2.0, 0.515]])  # 5 mm above its top: only inside with a 1 cm margin
  np.testing.assert_array_equal(geometry.points_in_boxes(points, centres, rot[None], half), [True, False, False])
  np.testing.assert_array_equal(geometry.points_in_boxes(points, centres, rot[None], half, margin=0.01),
                                [True, False, True])  # (0.028, -0.028) in the box frame: still outside
  assert geometry.points_in_boxes(points, np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3))).shape == (3,)


def test_hand_points_sit_above_the_grip_site_of_a_top_down_hand():
  import numpy as np

  from lamp_jax.libero import experts, geometry

  pos = np.array([0.1, -0.2, 1.0])
  pts = geometry.hand_points(pos, experts._top_down(0.0), open_fingers=False)  # pylint: disable=protected-access
  assert pts[:, 2].min() == pytest.approx(1.031) and pts[:, 2].max() == pytest.approx(1.123)
  assert np.ptp(pts[:, 0]) == pytest.approx(0.2) and np.ptp(pts[:, 1]) == pytest.approx(0.064)
  with_fingers = geometry.hand_points(pos, experts._top_down(0.0))  # pylint: disable=protected-access
  assert with_fingers[:, 2].min() == pytest.approx(1.0 - 0.009)  # the fingertips reach below the site


def _microwave_boxes():
  """A 20 x 16 x 14 cm cavity (floor, roof, back and side walls; open toward -y) as (centres, rots, half sizes)."""
  import numpy as np

  boxes = [((0.0, 0.0, 0.01), (0.12, 0.09, 0.01)),  # floor, top at z 0.02
           ((0.0, 0.0, 0.17), (0.12, 0.09, 0.01)),  # roof, underside at z 0.16
           ((0.0, 0.095, 0.09), (0.12, 0.005, 0.09)),  # back wall
           ((-0.115, 0.0, 0.09), (0.005, 0.09, 0.09)),  # left wall, inner face x -0.11
           ((0.115, 0.0, 0.09), (0.005, 0.09, 0.09))]  # right wall, inner face x 0.11
  centres = np.array([c for c, _ in boxes])
  halves = np.array([h for _, h in boxes])
  return centres, np.repeat(np.eye(3)[None], len(boxes), 0), halves


def test_insertion_pose_enters_through_the_open_side():
  import numpy as np

  from lamp_jax.libero import geometry

  centres, rots, halves = _microwave_boxes()
  cup = geometry.box_grid(((-0.03, 0.03), (-0.03, 0.03), (0.03, 0.11)), (4, 4, 4))  # 6 cm cup, 2 cm off the floor
  lo, hi = np.array([-0.1, -0.08]), np.array([0.1, 0.08])
  directions = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
  origin, d, travel = geometry.insertion_pose(centres, rots, halves, cup, lo, hi, directions)
  np.testing.assert_allclose(d, [0.0, -1.0])  # the only open side
  assert np.all(origin > lo) and np.all(origin < hi)
  assert travel == pytest.approx(origin[1] - lo[1] + 0.03 + 0.04)  # its innermost point 4 cm beyond the box
  # A hand 6 cm behind the cup's axis and above the cup's top (a handle grasp): only as deep as the roof allows.
  hand = geometry.box_grid(((-0.03, 0.03), (-0.09, -0.05), (0.12, 0.2)), (4, 4, 4))
  origin, d, _ = geometry.insertion_pose(centres, rots, halves, np.concatenate([cup, hand]), lo, hi, directions)
  np.testing.assert_allclose(d, [0.0, -1.0])
  assert origin[1] - 0.05 < -0.09 - 0.005 + 1e-9  # the hand's front stays >= 5 mm out of the roof's front edge
  # A hand above the cup's axis (a rim grasp) fits nowhere under the roof.
  over = geometry.box_grid(((-0.03, 0.03), (-0.03, 0.03), (0.12, 0.2)), (4, 4, 4))
  assert geometry.insertion_pose(centres, rots, halves, np.concatenate([cup, over]), lo, hi, directions) is None


def test_holding_hand_points_span_the_hand_and_closed_fingers():
  import numpy as np

  from lamp_jax.libero import experts, geometry

  pts = geometry.holding_hand_points(np.zeros(3), experts._top_down(0.0))  # pylint: disable=protected-access
  assert pts[:, 2].min() == pytest.approx(-0.009) and pts[:, 2].max() == pytest.approx(0.123)
  assert np.abs(pts[pts[:, 2] < 0.031 - 1e-9, 0]).max() == pytest.approx(0.02)  # the fingers, closed
