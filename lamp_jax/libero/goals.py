"""A LIBERO task's goal: the BDDL ``(:goal (And ...))`` as a list of predicates, in the order they are written.

LIBERO's four suites use five goal forms (lower-cased as LIBERO's parser gives them):
  on(obj, target)       obj rests on an object or a fixture region (e.g. ``flat_stove_1_cook_region``)
  in(obj, region)       obj's body origin lies inside a region's box (``basket_1_contain_region``)
  open(region) / close(region | object)   a drawer / microwave door joint
  turnon(object)        the stove's knob
LIBERO-10's tasks are conjunctions of two of these; the expert solves them one after another.
"""

from __future__ import annotations

import dataclasses
import re

KNOWN = ("on", "in", "open", "close", "turnon", "turnoff")
ARITY = {"on": 2, "in": 2, "open": 1, "close": 1, "turnon": 1, "turnoff": 1}


@dataclasses.dataclass(frozen=True)
class Predicate:
  name: str  # one of KNOWN
  args: tuple[str, ...]

  def __str__(self) -> str:
    return f"({self.name} {' '.join(self.args)})"


def from_parsed(goal_state) -> list[Predicate]:
  """LIBERO's ``env.parsed_problem['goal_state']`` ([['on', 'a', 'b'], ...]) -> predicates (validated)."""
  out = []
  for item in goal_state:
    if not item:
      raise ValueError(f"empty predicate in goal {goal_state!r}")
    name, args = str(item[0]).lower(), tuple(str(a) for a in item[1:])
    if name not in ARITY:
      raise ValueError(f"goal predicate {name!r} is not one of {KNOWN} (goal {goal_state!r})")
    if len(args) != ARITY[name]:
      raise ValueError(f"goal predicate {name!r} takes {ARITY[name]} arguments, got {args!r}")
    out.append(Predicate(name, args))
  if not out:
    raise ValueError("the task has an empty goal")
  return out


def parse_bddl_goal(text: str) -> list[Predicate]:
  """The ``(:goal ...)`` section of a BDDL file's text -> predicates (``(And p1 p2)`` flattened)."""
  match = re.search(r"\(:goal\b", text)
  if match is None:
    raise ValueError("BDDL text has no (:goal ...) section")
  depth, start, end = 0, match.start(), None
  for i in range(start, len(text)):
    if text[i] == "(":
      depth += 1
    elif text[i] == ")":
      depth -= 1
      if depth == 0:
        end = i
        break
  if end is None:
    raise ValueError("unbalanced parentheses in the BDDL (:goal ...) section")
  body = text[match.end():end]
  atoms = re.findall(r"\(\s*([A-Za-z]+)((?:\s+[^\s()]+)*)\s*\)", body)
  return from_parsed([[name] + args.split() for name, args in atoms if name.lower() != "and"])


def shared_target_slots(goal: list[Predicate]) -> list[tuple[int, int]]:
  """For each predicate, (k, n): it is the k-th of n ``on`` / ``in`` goals into the same target (``(0, 1)`` for
  any other predicate). Several objects bound for one region (both moka pots on the stove) each get a slot."""
  targets = [p.args[1] if p.name in ("on", "in") else None for p in goal]
  out = []
  for i, t in enumerate(targets):
    if t is None:
      out.append((0, 1))
    else:
      out.append((targets[:i].count(t), targets.count(t)))
  return out


def slot_offset(k: int, n: int, half_extent: float, spacing: float, margin: float = 0.01) -> float:
  """Offset (m) of slot k of n along a region's axis: slots ``spacing`` apart (closer if the region's
  ``half_extent`` minus ``margin`` cannot hold them), centred on the region's centre."""
  if not 0 <= k < n:
    raise ValueError(f"slot {k} of {n} does not exist")
  if n == 1:
    return 0.0
  step = min(spacing, 2.0 * max(half_extent - margin, 0.0) / (n - 1))
  return (k - 0.5 * (n - 1)) * step
