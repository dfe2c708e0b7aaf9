"""Client of ``lamp_jax.serve`` (imports numpy, msgpack and websockets only: no JAX, usable in the LIBERO venv).

  with PolicyClient("127.0.0.1", 8000) as client:
    client.reset("put the bowl on the plate")
    actions = client.infer({"image_0": uint8[h, w, 3], "image_2": ..., "state": float32[8]})   # float32[H, 7]
    client.last_timing   # {"decode_ms", "policy_ms", "total_ms"} on the server, "round_trip_ms" here
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from websockets.sync import client as ws_client

from lamp_jax.serving import codec


class PolicyServerError(RuntimeError):
  """The server answered a request with an error reply."""


class PolicyClient:
  """A connection to a policy server. ``connect_timeout``: seconds to keep retrying while the server starts."""

  def __init__(self, host: str = "127.0.0.1", port: int = 8000, connect_timeout: float = 30.0,
               max_message_bytes: int = 64 * 1024 * 1024):
    self.uri = f"ws://{host}:{port}"
    deadline = time.monotonic() + connect_timeout
    while True:
      try:
        self._conn = ws_client.connect(self.uri, compression=None, max_size=max_message_bytes, proxy=None,
                                       open_timeout=max(1.0, connect_timeout))
        break
      except (ConnectionRefusedError, OSError) as e:
        if time.monotonic() > deadline:
          raise ConnectionError(f"no policy server at {self.uri} after {connect_timeout:.0f} s: {e}") from e
        time.sleep(0.2)
    self.last_timing: dict[str, float] = {}

  def request(self, message: dict) -> dict:
    """Sends one request, returns the reply; error replies raise ``PolicyServerError``."""
    t0 = time.perf_counter()
    self._conn.send(codec.packb(message))
    reply = codec.unpackb(self._conn.recv())
    round_trip_ms = (time.perf_counter() - t0) * 1e3
    if not isinstance(reply, dict) or "ok" not in reply:
      raise PolicyServerError(f"malformed reply from {self.uri}: {reply!r:.200}")
    if not reply["ok"]:
      raise PolicyServerError(str(reply.get("error", "unknown error")))
    self.last_timing = dict(reply.get("timing", {}), round_trip_ms=round_trip_ms)
    return reply

  def health(self) -> dict:
    return self.request({"type": "health"})

  def reset(self, instruction: str) -> None:
    self.request({"type": "reset", "instruction": instruction})

  def infer(self, observation: dict[str, Any]) -> np.ndarray:
    """observation: {key: array} -> float32[H, 7] actions (a writable copy)."""
    reply = self.request({"type": "infer", "observation": observation})
    return np.array(reply["actions"], np.float32)

  def close(self) -> None:
    self._conn.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
