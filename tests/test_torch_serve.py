"""Serving an exported policy (LaMP and π0): the same websocket / msgpack protocol and client as the JAX policy, the
same actions through the client (loopback), per-policy observation validation, and a serving process that never
imports jax, flax or tensorflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import lamp_torch
from lamp_jax import export
from lamp_jax import serve
from lamp_jax.models import registry
from lamp_jax.serving import client as client_lib
from lamp_jax.serving import server as server_lib
from tests import export_helpers
from tests.export_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

lamp = registry.get("lamp")

INSTRUCTION = "stack the red cube on the blue cube"


class FixedNoiseExportedPolicy(lamp_torch.ExportedPolicy):
  noise: dict

  def draw_noise(self, batch_size):
    return {k: torch.from_numpy(v) for k, v in self.noise.items()}


# Model kind -> the configs/sim.py variant checkpointed (random parameters) and exported for the serving tests.
SIM_VARIANTS = {"lamp": "smoke", "pi0": "smoke_pi0"}


@pytest.fixture(scope="module", params=sorted(SIM_VARIANTS))
def exported(request, tmp_path_factory):
  root = tmp_path_factory.mktemp(f"serve_{request.param}")
  export_helpers.sim_checkpoint(root / "run", SIM_VARIANTS[request.param])
  export.export_checkpoint(str(root / "run"), str(root / "export"))
  assert json.loads((root / "export" / "config.json").read_text())["kind"] == request.param
  return root


def test_served_torch_and_jax_policies_return_the_same_actions(exported):
  jax_policy = export_helpers.FixedNoiseCheckpointPolicy(str(exported / "run"))
  torch_policy = FixedNoiseExportedPolicy(str(exported / "export"))
  rs = np.random.RandomState(0)
  noise = {k: rs.normal(size=s).astype(np.float32) for k, s in torch_policy.model.noise_shapes(1).items()}
  jax_policy.noise = torch_policy.noise = noise
  jax_server = server_lib.PolicyServer(jax_policy, host="127.0.0.1", port=0).start()
  torch_server = server_lib.PolicyServer(torch_policy, observation_spec=serve.observation_spec(torch_policy),
                                         host="127.0.0.1", port=0).start()
  rng = np.random.default_rng(0)
  try:
    with client_lib.PolicyClient("127.0.0.1", jax_server.port) as jax_client, \
         client_lib.PolicyClient("127.0.0.1", torch_server.port) as torch_client:
      assert jax_client.health()["action_horizon"] == torch_client.health()["action_horizon"] == 4
      spec = torch_client.health()["observation_spec"]
      image = {"dtype": "uint8", "shape": [-1, -1, 3], "required": True, "finite": False}
      assert spec == {"image_0": image, "image_2": image,
                      "state": {"dtype": "float32", "shape": [8], "required": True, "finite": True}}
      assert spec == jax_client.health()["observation_spec"]  # the same checks on both backends
      for client in (jax_client, torch_client):
        client.reset(INSTRUCTION)
      for size in ((48, 40), (32, 32)):
        observation = export_helpers.raw_observation(rng, size)
        want, got = jax_client.infer(observation), torch_client.infer(observation)
        assert got.shape == want.shape == (4, 7) and got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), np.abs(got - want).max()

      # Validation of the exported policy's observations: an error reply naming the key; the server goes on.
      observation = export_helpers.raw_observation(rng)
      del observation["image_2"]
      with pytest.raises(client_lib.PolicyServerError, match=r"missing observation keys \['image_2'\]"):
        torch_client.infer(observation)
      bad = dict(export_helpers.raw_observation(rng), image_0=np.zeros((32, 32, 4), np.uint8))
      with pytest.raises(client_lib.PolicyServerError, match=r"observation\['image_0'\] has shape \[32, 32, 4\]"):
        torch_client.infer(bad)
      bad = dict(export_helpers.raw_observation(rng), state=np.zeros(7, np.float32))
      with pytest.raises(client_lib.PolicyServerError, match=r"observation\['state'\] has shape \[7\], expected \[8\]"):
        torch_client.infer(bad)
      bad = dict(export_helpers.raw_observation(rng), state=np.full(8, np.nan, np.float32))
      with pytest.raises(client_lib.PolicyServerError, match=r"observation\['state'\] has 8 non-finite values"):
        torch_client.infer(bad)
      assert torch_client.infer(export_helpers.raw_observation(rng)).shape == (4, 7)
  finally:
    jax_server.shutdown()
    torch_server.shutdown()


def test_an_export_without_resize_requires_its_image_size(tmp_path):
  model_cfg = lamp.model_config("tiny")
  inputs = {"cameras": list(model_cfg.image_keys), "camera_keys": {"image_primary": "image_0", "image_wrist": ""},
            "image_size": [24, 24], "resize": False, "state_key": "state", "proprio_dim": 5, "state_dim": None}
  export.export_params(export_helpers.random_params(model_cfg), model_cfg, str(tmp_path), inputs=inputs,
                       normalization=None, source={},
                       tokenizer={"kind": "bytes", "words": "", "path": "", "max_len": 7, "truncate": True})
  policy = lamp_torch.from_pretrained(str(tmp_path))
  assert policy.camera_map == {"image_primary": "image_0"}  # a camera never given is not asked for
  with server_lib.PolicyServer(policy, observation_spec=serve.observation_spec(policy), host="127.0.0.1",
                               port=0) as server, client_lib.PolicyClient("127.0.0.1", server.port) as client:
    client.reset("go")
    good = {"image_0": np.zeros((24, 24, 3), np.uint8), "state": np.ones(3, np.float32)}
    assert client.infer(good).shape == (5, 7)
    with pytest.raises(client_lib.PolicyServerError, match=r"observation\['image_0'\] has shape \[30, 24, 3\], "
                       r"expected \[24, 24, 3\]"):
      client.infer(dict(good, image_0=np.zeros((30, 24, 3), np.uint8)))
    assert client.infer(good).shape == (5, 7)


def test_backend_and_source_flags_are_checked():
  with pytest.raises(SystemExit, match="write one with python -m lamp_jax.export"):
    serve.build_policy("/tmp/run", None, None, 0, True, backend="torch")
  with pytest.raises(SystemExit, match="--backend=torch"):
    serve.build_policy(None, None, None, 0, True, export="/tmp/export", backend="jax")
  with pytest.raises(SystemExit, match="exactly one of"):
    serve.build_policy("/tmp/run", None, None, 0, True, export="/tmp/export")


SERVE_AND_CHECK = r"""
import json, re, sys, threading, time, logging
import numpy as np
from lamp_jax import serve
from lamp_jax.serving import client as client_lib
export_dir = sys.argv[1]
thread = threading.Thread(target=serve.main, args=([f"--export={export_dir}", "--backend=torch", "--port=0",
                                                    "--torch-threads=1"],),
                          daemon=True)
handler = logging.Handler()
ports = []
handler.emit = lambda record: ports.extend(re.findall(r"on ws://127\.0\.0\.1:(\d+)", record.getMessage()))
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)
thread.start()
deadline = time.monotonic() + 120
while not ports and time.monotonic() < deadline:
  time.sleep(0.05)
rng = np.random.default_rng(0)
obs = {"image_0": rng.integers(0, 256, (48, 40, 3), dtype=np.uint8),
       "image_2": rng.integers(0, 256, (48, 40, 3), dtype=np.uint8),
       "state": rng.normal(size=8).astype(np.float32)}
with client_lib.PolicyClient("127.0.0.1", int(ports[0])) as client:
  health = client.health()
  client.reset("open the drawer")
  actions = client.infer(obs)
import lamp_torch
sampled = lamp_torch.from_pretrained(export_dir).sample_actions({**obs, "instruction": "open the drawer"})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax", "tensorflow", "optax", "orbax"))
import torch
print(json.dumps({"loaded": loaded, "policy": health["policy"], "actions": actions.tolist(),
                  "sampled_shape": list(sampled.shape), "threads": torch.get_num_threads()}))
"""


def test_serving_an_export_imports_no_jax(exported):
  """``python -m lamp_jax.serve --export=DIR --backend=torch --torch-threads=1``'s main in a fresh process: health,
  reset, infer through the client, a direct sample; then not one jax / flax / tensorflow module is loaded. Its
  first actions are those of the same policy (seed 0) in this process."""
  env = dict(os.environ, PYTHONPATH=export_helpers.REPO)
  proc = subprocess.run([sys.executable, "-c", SERVE_AND_CHECK, str(exported / "export")], cwd=export_helpers.REPO,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["loaded"] == [], result["loaded"]
  assert result["policy"].startswith("export:") and result["sampled_shape"] == [1, 4, 7]
  assert result["threads"] == 1  # --torch-threads=1
  policy = lamp_torch.from_pretrained(str(exported / "export"))
  policy.reset("open the drawer")
  rng = np.random.default_rng(0)
  observation = {"image_0": rng.integers(0, 256, (48, 40, 3), dtype=np.uint8),
                 "image_2": rng.integers(0, 256, (48, 40, 3), dtype=np.uint8),
                 "state": rng.normal(size=8).astype(np.float32)}
  # Same noise (seed 0, first call); another intra-op thread count may reorder float sums.
  np.testing.assert_allclose(np.asarray(result["actions"], np.float32), policy(observation), atol=1e-5)
