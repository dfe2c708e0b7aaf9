"""Policy server and client: wire format, protocol, validation (the server keeps serving), no JAX in the client."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import websockets

from lamp_jax.serving import client as client_lib
from lamp_jax.serving import codec
from lamp_jax.serving import server as server_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class AffinePolicy:
  """actions[h] = (h + 1) * state[:7] + len(instruction): outputs that prove which inputs reached the policy."""

  action_horizon = 3

  def __init__(self):
    self.instruction = None
    self.calls = 0

  def reset(self, instruction):
    if "explode" in instruction:
      raise ValueError("cannot parse the instruction on purpose")
    self.instruction = instruction

  def __call__(self, observation):
    self.calls += 1
    if "image_0" in observation:
      assert observation["image_0"].dtype == np.uint8
    state = observation["state"]
    if state[0] < -100:
      raise FloatingPointError("policy failure on purpose")
    h = np.arange(1, self.action_horizon + 1, dtype=np.float32)[:, None]
    return h * state[None, :7] + len(self.instruction)


@pytest.fixture(scope="module")
def served():
  policy = AffinePolicy()
  server = server_lib.PolicyServer(policy, host="127.0.0.1", port=0, max_message_bytes=200_000).start()
  yield policy, server
  server.shutdown()


def _obs(rng, size=(13, 11)):
  return {"image_0": rng.integers(0, 256, size=size + (3,), dtype=np.uint8),
          "state": rng.normal(size=8).astype(np.float32)}


def test_codec_round_trip_all_dtypes():
  rng = np.random.default_rng(0)
  tree = {"a": {np.dtype(d).name: (rng.normal(size=(3, 5)) * 10).astype(d) for d in codec.ALLOWED_DTYPES},
          "s": "text", "n": [1, 2.5, None], "scalar": np.float32(1.5), "empty": np.zeros((0, 7), np.float32)}
  back = codec.unpackb(codec.packb(tree))
  for name, arr in tree["a"].items():
    np.testing.assert_array_equal(back["a"][name], arr)
    assert back["a"][name].dtype == arr.dtype and back["a"][name].shape == arr.shape
  assert back["s"] == "text" and back["n"] == [1, 2.5, None] and back["scalar"] == 1.5
  assert back["empty"].shape == (0, 7)
  big_endian = np.arange(4, dtype=">i4")
  np.testing.assert_array_equal(codec.unpackb(codec.packb(big_endian)), np.arange(4))


def test_codec_rejects_unsafe_or_inconsistent_payloads():
  with pytest.raises(codec.CodecError, match="dtype object"):
    codec.packb(np.array([{"x": 1}], dtype=object))
  with pytest.raises(codec.CodecError, match="cannot encode"):
    codec.packb({"x": object()})
  bad = {codec.ARRAY_TAG: True, "dtype": "<f4", "shape": [2, 3], "data": b"\0" * 23}
  import msgpack

  with pytest.raises(codec.CodecError, match="needs 24 bytes"):
    codec.unpackb(msgpack.packb(bad))
  with pytest.raises(codec.CodecError, match="not allowed"):
    codec.unpackb(msgpack.packb(dict(bad, dtype="|O", data=b"")))
  with pytest.raises(codec.CodecError, match="shape"):
    codec.unpackb(msgpack.packb(dict(bad, shape=[-1, 3])))
  with pytest.raises(codec.CodecError, match="not valid msgpack"):
    codec.unpackb(b"\xc1\xff\x00garbage")


def test_health_reset_infer_round_trip(served):
  policy, server = served
  rng = np.random.default_rng(1)
  with client_lib.PolicyClient("127.0.0.1", server.port) as client:
    health = client.health()
    assert health["status"] == "ok" and health["action_horizon"] == 3
    assert health["observation_spec"]["state"] == {"dtype": "float32", "shape": [-1], "required": True,
                                                   "finite": True}
    client.reset("put the bowl on the plate")
    assert policy.instruction == "put the bowl on the plate"
    obs = _obs(rng)
    actions = client.infer(obs)
    expected = np.arange(1, 4, dtype=np.float32)[:, None] * obs["state"][None, :7] + 25
    np.testing.assert_allclose(actions, expected, rtol=1e-6)
    assert actions.dtype == np.float32 and actions.flags.writeable
    timing = client.last_timing
    assert set(timing) == {"decode_ms", "policy_ms", "total_ms", "round_trip_ms"}
    assert 0 <= timing["policy_ms"] <= timing["total_ms"] <= timing["round_trip_ms"]


@pytest.mark.parametrize("message, error", [
    ({"type": "infer", "observation": {"state": np.zeros(8, np.float32), "depth": np.zeros((4, 4), np.float32)}},
     "unknown observation keys \\['depth'\\]"),
    ({"type": "infer", "observation": {"state": np.zeros(8, np.float64)}}, "dtype float64, expected float32"),
    ({"type": "infer", "observation": {"state": np.zeros(8, np.float32), "image_0": np.zeros((5, 5, 4), np.uint8)}},
     "shape \\[5, 5, 4\\]"),
    ({"type": "infer", "observation": {"image_0": np.zeros((5, 5, 3), np.uint8)}}, "missing observation keys"),
    ({"type": "infer", "observation": {"state": [0.0] * 8}}, "must be an array"),
    ({"type": "infer", "observation": {"state": np.full(8, -1e3, np.float32)}}, "policy failure on purpose"),
    ({"type": "infer", "observation": {"state": np.zeros(8, np.float32)}, "extra": 1}, "unknown keys"),
    ({"type": "train"}, "unknown request type"),
    ({"type": "reset", "instruction": ""}, "non-empty string"),
    ([1, 2, 3], "must be a map"),
])
def test_invalid_requests_get_error_replies_and_server_keeps_serving(served, message, error):
  _, server = served
  rng = np.random.default_rng(2)
  with client_lib.PolicyClient("127.0.0.1", server.port) as client:
    client.reset("task")
    with pytest.raises(client_lib.PolicyServerError, match=error):
      client.request(message)
    client.reset("task")  # (a failed reset leaves the session without an instruction until a good one)
    assert client.infer(_obs(rng)).shape == (3, 7)  # same connection still served


def test_a_failed_reset_leaves_the_session_without_an_instruction(served):
  policy, server = served
  rng = np.random.default_rng(4)
  obs = _obs(rng)
  with client_lib.PolicyClient("127.0.0.1", server.port) as client:
    client.reset("first task")
    np.testing.assert_allclose(client.infer(obs)[0], obs["state"][:7] + len("first task"), rtol=1e-6)
    calls = policy.calls
    for bad in ("explode the cube", "", None):  # the policy raising, then invalid requests
      with pytest.raises(client_lib.PolicyServerError):
        client.request({"type": "reset", "instruction": bad})
      with pytest.raises(client_lib.PolicyServerError, match=r"no instruction: the last reset failed \("):
        client.infer(obs)  # never answered with the previous episode's instruction
    assert policy.calls == calls
    with client_lib.PolicyClient("127.0.0.1", server.port) as other:  # the session is the server's, not a socket's
      with pytest.raises(client_lib.PolicyServerError, match="no instruction"):
        other.infer(obs)
    client.reset("second")
    np.testing.assert_allclose(client.infer(obs)[0], obs["state"][:7] + len("second"), rtol=1e-6)


def test_non_finite_state_is_an_error_naming_the_field(served):
  policy, server = served
  obs = _obs(np.random.default_rng(5))
  obs["state"][3] = np.nan
  obs["state"][5] = np.inf
  with client_lib.PolicyClient("127.0.0.1", server.port) as client:
    client.reset("task")
    calls = policy.calls
    with pytest.raises(client_lib.PolicyServerError,
                       match=r"observation\['state'\] has 2 non-finite values \(first: nan at index \[3\]\)"):
      client.infer(obs)
    assert policy.calls == calls  # rejected before the policy ran


def test_non_utf8_instruction_is_a_clear_error(served):
  import msgpack

  _, server = served
  # A msgpack str whose bytes are not UTF-8 (no conforming encoder writes one, a buggy client can).
  frame = (b"\x82" + msgpack.packb("type") + msgpack.packb("reset") + msgpack.packb("instruction")
           + bytes([0xA0 + len(b"put \xff\xfe cube")]) + b"put \xff\xfe cube")
  with client_lib.PolicyClient("127.0.0.1", server.port) as client:
    client._conn.send(frame)  # pylint: disable=protected-access
    reply = codec.unpackb(client._conn.recv())  # pylint: disable=protected-access
    assert not reply["ok"]
    assert reply["error"] == ("CodecError: text field 'instruction' (byte 0xff at offset 4) is not valid UTF-8; "
                              "send text as UTF-8 strings")
    with pytest.raises(client_lib.PolicyServerError, match=r"'instruction' is not valid UTF-8 text \(byte 0xff "
                       r"at offset 4\)"):
      client.request({"type": "reset", "instruction": b"put \xff cube"})  # as a binary field
    client.reset("put the \u00e9cru cube on the plate")  # non-ASCII UTF-8 is fine
    assert client.infer(_obs(np.random.default_rng(6))).shape == (3, 7)


class _SpecPolicy(AffinePolicy):
  """A policy that states its observation spec (as CheckpointPolicy does): two cameras, state float32[8]."""

  def observation_spec(self):
    return {"image_0": server_lib.ArraySpec("uint8", (6, 6, 3), required=True),
            "image_2": server_lib.ArraySpec("uint8", (6, 6, 3), required=True),
            "state": server_lib.ArraySpec("float32", (8,), required=True, finite=True)}


@pytest.mark.parametrize("change, error", [
    (lambda o: o.update(state=np.zeros(9, np.float32)), r"observation\['state'\] has shape \[9\], expected \[8\]$"),
    (lambda o: o.update(state=np.zeros(7, np.float32)), r"observation\['state'\] has shape \[7\], expected \[8\]$"),
    (lambda o: o.pop("image_2"), r"missing observation keys \['image_2'\]"),
    (lambda o: o.update(image_0=np.zeros((6, 6, 4), np.uint8)), r"observation\['image_0'\] has shape \[6, 6, 4\]"),
    (lambda o: o.update(image_0=np.zeros((8, 8, 3), np.uint8)), r"observation\['image_0'\] has shape \[8, 8, 3\], "
                                                                 r"expected \[6, 6, 3\]"),
    (lambda o: o.update(image_2=np.zeros((6, 6, 3), np.float32)), r"observation\['image_2'\] has dtype float32, "
                                                                   r"expected uint8"),
    (lambda o: o.update(image_1=np.zeros((6, 6, 3), np.uint8)), r"unknown observation keys \['image_1'\]"),
])
def test_the_policy_s_own_spec_is_enforced(change, error):
  policy = _SpecPolicy()
  with server_lib.PolicyServer(policy, host="127.0.0.1", port=0) as server:
    with client_lib.PolicyClient("127.0.0.1", server.port) as client:
      spec = client.health()["observation_spec"]
      assert spec["state"] == {"dtype": "float32", "shape": [8], "required": True, "finite": True}
      client.reset("task")
      obs = {"image_0": np.zeros((6, 6, 3), np.uint8), "image_2": np.zeros((6, 6, 3), np.uint8),
             "state": np.zeros(8, np.float32)}
      assert client.infer(obs).shape == (3, 7)
      change(obs)
      with pytest.raises(client_lib.PolicyServerError, match=error):
        client.infer(obs)
  assert policy.calls == 1


def test_oversize_payloads(served):
  _, server = served
  rng = np.random.default_rng(3)
  with client_lib.PolicyClient("127.0.0.1", server.port) as client:
    client.reset("task")
    with pytest.raises(client_lib.PolicyServerError, match="exceeds the limit of 200000 bytes"):
      client.infer(_obs(rng, size=(300, 300)))  # 270 kB: over the limit, under the websocket hard cap (2x)
    assert client.infer(_obs(rng)).shape == (3, 7)
  # Past the hard cap the websocket layer closes that connection (code 1009); the server goes on.
  with client_lib.PolicyClient("127.0.0.1", server.port) as client:
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
      client.infer(_obs(rng, size=(400, 400)))
    assert closed.value.rcvd.code == 1009
  with client_lib.PolicyClient("127.0.0.1", server.port) as client:
    client.reset("task")
    assert client.infer(_obs(rng)).shape == (3, 7)


def test_text_frame_and_garbage_bytes(served):
  _, server = served
  with client_lib.PolicyClient("127.0.0.1", server.port) as client:
    client._conn.send("hello")  # pylint: disable=protected-access
    reply = codec.unpackb(client._conn.recv())  # pylint: disable=protected-access
    assert not reply["ok"] and "binary" in reply["error"]
    client._conn.send(b"\xc1garbage")  # pylint: disable=protected-access
    reply = codec.unpackb(client._conn.recv())  # pylint: disable=protected-access
    assert not reply["ok"] and "msgpack" in reply["error"]
    assert client.health()["ok"]


def test_http_healthz(served):
  _, server = served
  with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz") as response:
    assert response.status == 200 and response.read() == b"OK\n"


def test_client_and_codec_import_no_jax_or_tensorflow():
  code = ("import sys; import lamp_jax.serving.client, lamp_jax.serving.codec; "
          "bad = [m for m in ('jax', 'tensorflow', 'flax', 'torch') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_serve_cli_random_policy_end_to_end():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  proc = subprocess.Popen([sys.executable, "-m", "lamp_jax.serve", "--policy=random", "--port=0"], cwd=REPO,
                          env=env, stderr=subprocess.PIPE, text=True)
  try:
    port = None
    for line in proc.stderr:
      match = re.search(r"on ws://127\.0\.0\.1:(\d+)", line)
      if match:
        port = int(match.group(1))
        break
    assert port is not None, "server did not report its port"
    with client_lib.PolicyClient("127.0.0.1", port) as client:
      assert client.health()["policy"] == "random"
      client.reset("pick up the cube")
      obs = {"image_0": np.zeros((8, 8, 3), np.uint8), "state": np.zeros(8, np.float32)}
      actions = client.infer(obs)
      assert actions.shape == (4, 7) and np.all(np.isin(actions[:, 6], [0.0, 1.0]))
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=30)  # cleanup only: escalate instead of failing the test on a slow exit
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def test_load_bench_counts_every_request(served):
  from lamp_jax.perf import serve_load

  _, server = served
  result = serve_load.run_load("127.0.0.1", server.port, clients=4, requests=5, image_size=9)
  assert result["ok"] == 20 and result["errors"] == 0 and result["first_errors"] == []
  ms = result["round_trip_ms"]
  assert 0 < ms["p50"] <= ms["p90"] <= ms["p99"] <= ms["max"]
  obs = serve_load.observation_from_spec({"image_0": {"dtype": "uint8", "shape": [-1, -1, 3]},
                                          "state": {"dtype": "float32", "shape": [5]}}, np.random.default_rng(0), 9)
  assert obs["image_0"].shape == (9, 9, 3) and obs["state"].shape == (5,) and obs["state"].dtype == np.float32


def test_serve_takes_either_form_of_a_policys_observation_spec():
  """``python -m lamp_jax.serve --checkpoint=DIR`` failed to start (TypeError) after CheckpointPolicy's spec became
  {key: ArraySpec}: the server's spec takes ArraySpecs as they are and the torch export's (dtype, shape, required)
  tuples as before."""
  from lamp_jax import serve  # pylint: disable=g-import-not-at-top

  state = server_lib.ArraySpec("float32", (7,), required=True, finite=True)

  class WithArraySpecs:
    def observation_spec(self):
      return {"state": state}

  class WithTuples:
    def observation_spec(self):
      return {"image_0": ("uint8", (None, None, 3), True), "state": ("float32", (7,), True)}

  assert serve.observation_spec(WithArraySpecs()) == {"state": state}
  spec = serve.observation_spec(WithTuples())
  assert spec["state"] == state
  assert spec["image_0"] == server_lib.ArraySpec("uint8", (None, None, 3), required=True, max_dim=serve.IMAGE_MAX_DIM)
  assert serve.observation_spec(object()) is None
