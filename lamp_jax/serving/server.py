"""A websocket server in front of one policy (``reset(instruction)``, ``__call__(observation) -> float32[H, 7]``).

Protocol (every message a binary msgpack frame of ``lamp_jax.serving.codec``; one reply per request):

  {"type": "health"}                          -> {"ok": True, "status": "ok", "policy": str, "action_horizon": H,
                                                  "observation_spec": {key: {"dtype", "shape", "required"}}}
  {"type": "reset", "instruction": str}       -> {"ok": True, "timing": {...}}
  {"type": "infer", "observation": {key: array}}
                                              -> {"ok": True, "actions": float32[H, 7], "timing": {...}}
  anything invalid                            -> {"ok": False, "error": "<what and where>"}; the connection and
                                                 the server stay up.

Validation: every observation entry is checked against the served policy's ``observation_spec()`` when it has one
(``CheckpointPolicy``: the cameras, image size and channels, proprio length of the model it serves), else against
``default_observation_spec``: key known, required keys present, dtype, shape, and finiteness of float entries;
the error names the entry (``observation['state'] has shape [9], expected [8]``). Instructions must be non-empty
UTF-8 text (a string that is not valid UTF-8 is an error naming the field). A reset that fails (invalid request
or the policy raising) leaves the session without an instruction: every ``infer`` is an error until a reset
succeeds, so a failed reset never runs the next observations under the previous episode's instruction.

``timing`` holds server-side milliseconds: ``decode_ms`` (unpack + validate), ``policy_ms`` and ``total_ms``
(from receipt to the reply being built). Messages larger than ``max_message_bytes`` get an error reply; ones past
twice that are refused by the websocket layer itself (the connection closes with code 1009, the server goes on).
``GET /healthz`` over plain HTTP answers ``200 OK`` (for load balancers and shell scripts).

One policy serves all connections; calls are serialised by a lock, and ``reset`` / ``infer`` act on the
policy's single episode state, so one client drives an episode at a time (the LIBERO harness runs episodes
one after another).
"""

from __future__ import annotations

import dataclasses
import http
import logging
import threading
import time
from typing import Any, Mapping

import numpy as np
from websockets.sync import server as ws_server

from lamp_jax.serving import codec

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_INSTRUCTION_CHARS = 1000
ACTION_DIM = 7

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ArraySpec:
  """An accepted observation entry: dtype and shape (``None`` = any size along that axis, up to ``max_dim``);
  ``finite``: every value of a float entry must be finite."""

  dtype: str
  shape: tuple[int | None, ...]
  required: bool = False
  max_dim: int = 1024
  finite: bool = False

  def check(self, key: str, value: Any) -> None:
    if not isinstance(value, np.ndarray):
      raise ValueError(f"observation[{key!r}] must be an array, got {type(value).__name__}")
    if value.dtype != np.dtype(self.dtype):
      raise ValueError(f"observation[{key!r}] has dtype {value.dtype}, expected {np.dtype(self.dtype)}")
    if value.ndim != len(self.shape) or any(
        (s is not None and d != s) or (s is None and not 1 <= d <= self.max_dim)
        for d, s in zip(value.shape, self.shape)):
      wildcard = f" (* = 1..{self.max_dim})" if None in self.shape else ""
      raise ValueError(f"observation[{key!r}] has shape {list(value.shape)}, expected "
                       f"{['*' if s is None else s for s in self.shape]}{wildcard}")
    if self.finite and value.dtype.kind == "f":
      bad = ~np.isfinite(value)
      if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"observation[{key!r}] has {int(bad.sum())} non-finite values (first: "
                         f"{value[first]} at index {list(first)})")

  def to_json(self) -> dict:
    return {"dtype": np.dtype(self.dtype).name, "shape": [s if s is not None else -1 for s in self.shape],
            "required": self.required, "finite": self.finite}


def default_observation_spec(policy: Any) -> dict[str, ArraySpec]:
  """The policy's own ``observation_spec()`` when it has one (``CheckpointPolicy``: from the served model's
  config), else the simulator observation layout: ``image_<k>`` uint8[h, w, 3] (optional) and a finite
  ``state`` float32[S].

  Image keys of the fallback layout are the policy's camera mapping (``camera_map`` values) when it has one,
  else image_0 .. image_2.
  """
  own = getattr(policy, "observation_spec", None)
  if callable(own):
    return dict(own())
  camera_map = getattr(policy, "camera_map", None) or {}
  image_keys = sorted({k for k in camera_map.values() if k}) or ["image_0", "image_1", "image_2"]
  spec = {k: ArraySpec("uint8", (None, None, 3)) for k in image_keys}
  spec["state"] = ArraySpec("float32", (None,), required=True, max_dim=64, finite=True)
  return spec


def check_instruction(instruction: Any) -> str:
  """A valid instruction (non-empty text of at most ``MAX_INSTRUCTION_CHARS`` that encodes as UTF-8) or
  ValueError naming the field."""
  if isinstance(instruction, (bytes, bytearray)):
    try:
      instruction = bytes(instruction).decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(f"'instruction' is not valid UTF-8 text (byte {bytes(instruction)[e.start]:#04x} at "
                       f"offset {e.start}); send the instruction as a UTF-8 string") from None
  if not isinstance(instruction, str) or not instruction.strip() or len(instruction) > MAX_INSTRUCTION_CHARS:
    raise ValueError(f"'instruction' must be a non-empty string of at most {MAX_INSTRUCTION_CHARS} characters")
  try:
    instruction.encode("utf-8")
  except UnicodeEncodeError as e:
    raise ValueError(f"'instruction' is not valid UTF-8 text (character {instruction[e.start]!r} at offset "
                     f"{e.start} has no UTF-8 encoding)") from None
  return instruction


class PolicyServer:
  """Serves ``policy`` on ``ws://host:port``. ``serve_forever()`` blocks; ``start()`` runs it in a thread."""

  def __init__(self, policy: Any, observation_spec: Mapping[str, ArraySpec] | None = None,
               host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
               max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, name: str | None = None):
    self.policy = policy
    self.observation_spec = dict(observation_spec or default_observation_spec(policy))
    self.max_message_bytes = int(max_message_bytes)
    self.name = name or type(policy).__name__
    self._lock = threading.Lock()
    self._reset_error: str | None = None  # why the last reset failed; infer answers with it until a good reset
    self._thread: threading.Thread | None = None
    self._server = ws_server.serve(self._handle, host, port, max_size=2 * self.max_message_bytes,
                                   compression=None, process_request=self._process_request)

  @property
  def port(self) -> int:
    return self._server.socket.getsockname()[1]

  @property
  def host(self) -> str:
    return self._server.socket.getsockname()[0]

  def serve_forever(self) -> None:
    self._server.serve_forever()

  def start(self) -> "PolicyServer":
    self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="policy-server")
    self._thread.start()
    return self

  def shutdown(self) -> None:
    self._server.shutdown()
    if self._thread is not None:
      self._thread.join(timeout=10)

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.shutdown()

  # -- request handling -----------------------------------------------------------------------------------

  @staticmethod
  def _process_request(connection, request):
    if request.path == "/healthz":
      return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None

  def _handle(self, connection) -> None:
    for message in connection:
      reply = self.handle_message(message)
      connection.send(codec.packb(reply))

  def handle_message(self, message: Any) -> dict:
    """One request (raw frame) -> its reply dict. Never raises."""
    start = time.perf_counter()
    try:
      if isinstance(message, str):
        raise ValueError("send binary msgpack frames, not text")
      if len(message) > self.max_message_bytes:
        raise ValueError(f"message of {len(message)} bytes exceeds the limit of {self.max_message_bytes} bytes")
      request = codec.unpackb(message)
      reply = self._dispatch(request, start)
    except Exception as e:  # pylint: disable=broad-except  (every failure becomes an error reply)
      log.info("request failed: %s: %s", type(e).__name__, e)
      return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    reply["timing"]["total_ms"] = (time.perf_counter() - start) * 1e3
    return reply

  def _dispatch(self, request: Any, start: float) -> dict:
    if not isinstance(request, dict):
      raise ValueError(f"request must be a map, got {type(request).__name__}")
    kind = request.get("type")
    allowed = {"health": {"type"}, "reset": {"type", "instruction"}, "infer": {"type", "observation"}}
    if kind not in allowed:
      raise ValueError(f"unknown request type {kind!r}; expected one of {sorted(allowed)}")
    unknown = set(request) - allowed[kind]
    if unknown:
      raise ValueError(f"unknown keys {sorted(map(str, unknown))} in a {kind!r} request")
    if kind == "health":
      return {"ok": True, "status": "ok", "policy": self.name,
              "action_horizon": int(self.policy.action_horizon),
              "observation_spec": {k: v.to_json() for k, v in self.observation_spec.items()},
              "timing": {}}
    if kind == "reset":
      with self._lock:
        self._reset_error = "a reset is in progress"
        try:
          instruction = check_instruction(request.get("instruction"))
          t0 = time.perf_counter()
          self.policy.reset(instruction)
        except Exception as e:  # pylint: disable=broad-except  (the session stays without an instruction)
          self._reset_error = f"{type(e).__name__}: {e}"
          raise
        self._reset_error = None
        return {"ok": True, "timing": {"policy_ms": (time.perf_counter() - t0) * 1e3}}
    observation = self._validate_observation(request.get("observation"))
    decode_ms = (time.perf_counter() - start) * 1e3
    with self._lock:
      if self._reset_error is not None:
        raise RuntimeError(f"no instruction: the last reset failed ({self._reset_error}); send a reset that "
                           "succeeds before infer")
      t0 = time.perf_counter()
      actions = self.policy(observation)
      policy_ms = (time.perf_counter() - t0) * 1e3
    actions = np.asarray(actions, np.float32)
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or not np.all(np.isfinite(actions)):
      raise RuntimeError(f"policy returned invalid actions: shape {list(actions.shape)}, expected finite "
                         f"[H, {ACTION_DIM}]")
    return {"ok": True, "actions": actions, "timing": {"decode_ms": decode_ms, "policy_ms": policy_ms}}

  def _validate_observation(self, observation: Any) -> dict[str, np.ndarray]:
    if not isinstance(observation, dict):
      raise ValueError(f"'observation' must be a map of arrays, got {type(observation).__name__}")
    unknown = set(observation) - set(self.observation_spec)
    if unknown:
      raise ValueError(f"unknown observation keys {sorted(map(str, unknown))}; accepted: "
                       f"{sorted(self.observation_spec)}")
    missing = [k for k, s in self.observation_spec.items() if s.required and k not in observation]
    if missing:
      raise ValueError(f"missing observation keys {missing}")
    for key, value in observation.items():
      self.observation_spec[key].check(key, value)
    return dict(observation)
