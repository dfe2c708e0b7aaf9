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
