"""Small TF helpers shared by the standardisation functions (Octo's Bridge conventions, re-implemented)."""

from __future__ import annotations

import tensorflow as tf


def slice_steps(tree, start=0, stop=None):
  """Apply ``x[start:stop]`` to every tensor of a nested dict of per-step tensors."""
  return tf.nest.map_structure(lambda x: x[start:stop], tree)


def binarize_gripper(gripper: tf.Tensor, open_above: float = 0.95, closed_below: float = 0.05) -> tf.Tensor:
  """float32[L] continuous gripper command -> {0, 1} (Octo's ``binarize_gripper_actions``).

  Values above ``open_above`` become 1, below ``closed_below`` 0; values in between take the value of the next
  decided step (the state the transition reaches). Trailing undecided values: Octo's released code carries the
  raw last value (which can stay fractional); we round it to {0, 1} so the output is always binary.
  """
  gripper = tf.cast(gripper, tf.float32)
  is_open = gripper > open_above
  undecided = tf.logical_not(tf.logical_or(is_open, gripper < closed_below))
  decided_value = tf.cast(is_open, tf.float32)

  def step(carry, inputs):
    value, undecided_here = inputs
    return tf.where(undecided_here, carry, value)

  initial = tf.cond(tf.size(gripper) > 0, lambda: tf.round(tf.clip_by_value(gripper[-1], 0.0, 1.0)),
                    lambda: tf.constant(1.0))
  return tf.scan(step, (decided_value, undecided), initializer=initial, reverse=True)


def relabel_from_state(trajectory: dict) -> dict:
  """Octo's ``relabel_bridge_actions``: position/rotation actions become the reached state change.

  action[t, :6] = state[t + 1, :6] - state[t, :6]; the gripper action is kept. The last step (no next state)
  is dropped from every key, so the episode gets one step shorter.
  """
  state = trajectory["observation"]["proprio"]
  movement = state[1:, :6] - state[:-1, :6]
  truncated = slice_steps(trajectory, 0, -1)
  truncated["action"] = tf.concat([movement, trajectory["action"][:-1, -1:]], axis=-1)
  return truncated
