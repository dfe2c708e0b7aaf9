"""The PyTorch export against the JAX policy on this host; prints JSON.

  python -m lamp_jax.perf.export_bench --config=configs/sim.py [--repeats=20] [--batch_size=1]
  python -m lamp_jax.perf.export_bench --config=configs/pi0.py:sim      # any exportable kind (export.KINDS)

``sample_actions`` latency at --batch_size of the jitted JAX model and of the exported PyTorch model
(``lamp_jax.export`` -> ``lamp_torch``) on the same inputs and injected noise (torch with its default intra-op threads
and with one thread), interleaved round-robin (their max abs difference is reported as a check); export time (cold:
including the tracing that gives the layout; warm: mapping + writing) and file size at the config's size; the file
size at the paper size computed from abstract shapes (``lamp_jax.export.predicted_size``: nothing allocated) in
float32 and bfloat16 (``paper``: null for a library without a 'paper' variant, e.g. LAFP).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from lamp_jax import export
from lamp_jax import specs
from lamp_jax.models import registry
from lamp_jax.perf import timing

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with a `model` section (configs/sim.py).")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per variant.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")


def bench_torch_export(model_cfg, batch_size: int, repeats: int, seed: int) -> dict:
  """JAX vs exported PyTorch ``sample_actions`` latency and export figures (see the module docstring)."""
  import torch  # pylint: disable=g-import-not-at-top  (torch only for this benchmark)

  import lamp_torch  # pylint: disable=g-import-not-at-top
  model_cfg = copy.deepcopy(model_cfg)
  lib = registry.for_config(model_cfg)
  batch = timing.inference_batch(lib, model_cfg, batch_size, seed)
  params = jax.device_get(lib.init_params(model_cfg, jax.random.key(seed), lib.dummy_batch(model_cfg, batch_size, seed)))
  cameras = list(model_cfg.image_keys)
  inputs = {"cameras": cameras, "camera_keys": {c: c for c in cameras}, "image_size": [model_cfg.image_size] * 2,
            "resize": False, "state_key": "state", "proprio_dim": int(model_cfg.proprio_dim), "state_dim": None}
  tokenizer = {"kind": "bytes", "words": "", "path": "", "max_len": int(model_cfg.max_token_len), "truncate": True}
  with tempfile.TemporaryDirectory() as tmp:
    export_s = {}
    for name in ("cold", "warm"):
      start = time.perf_counter()
      info = export.export_params(params, model_cfg, os.path.join(tmp, name), inputs=inputs, normalization=None,
                                  tokenizer=tokenizer, source={"bench": True})
      export_s[name] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    policy = lamp_torch.from_pretrained(os.path.join(tmp, "warm"))
    load_s = time.perf_counter() - start

  model = lib.build(model_cfg)
  rs = np.random.RandomState(seed + 1)
  noise = {k: rs.normal(size=v).astype(np.float32) for k, v in policy.model.noise_shapes(batch_size).items()}
  obs = batch[specs.OBSERVATION]
  images = np.stack([obs[k][:, -1].astype(np.float32) / 127.5 - 1.0 for k in cameras], axis=1)
  torch_inputs = {"images": torch.from_numpy(images),
                  "image_mask": torch.from_numpy(np.stack([obs[specs.IMAGE_MASK][k][:, -1] for k in cameras], 1)),
                  "tokens": torch.from_numpy(batch[specs.TASK][specs.TOKENS]),
                  "token_mask": torch.from_numpy(batch[specs.TASK][specs.TOKEN_MASK]),
                  "proprio": torch.from_numpy(np.array(obs[specs.PROPRIO][:, -1]))}
  torch_noise = {k: torch.from_numpy(v) for k, v in noise.items()}
  jax_params = jax.tree.map(jnp.asarray, params)
  fn = lambda p, b, n: model.apply({"params": p}, b, jax.random.key(0), noise=n, method="sample_actions")  # noqa
  compiled, compile_s = timing.compile_call(fn, jax_params, batch, noise)

  default_threads = torch.get_num_threads()

  def torch_call(threads):
    def call():
      torch.set_num_threads(threads)
      with torch.inference_mode():
        return policy.model.sample_actions(torch_inputs, torch_noise).numpy()
    return call

  # torch's intra-op threads (OpenMP) on a host shared with other jobs: one thread can beat all of them.
  calls = {"jax": lambda: compiled(jax_params, batch, noise), "torch": torch_call(default_threads),
           "torch_1_thread": torch_call(1)}
  times = timing.time_round_robin(calls, repeats)
  latency = {k: t.median_s for k, t in times.items()}
  fastest = {k: t.min_s for k, t in times.items()}
  torch.set_num_threads(default_threads)
  max_abs_diff = float(np.abs(np.asarray(calls["jax"]()) - calls["torch"]()).max())
  # The paper-size export (abstract shapes only) for the libraries with a 'paper' variant (LaMP, π0).
  paper = lib.model_config("paper") if "paper" in lib.variants else None
  return {
      "what": "torch_export", "model": lib.name, "variant": model_cfg.variant,
      "use_motion": bool(model_cfg.get("use_motion", False)),
      "batch_size": batch_size, "repeats": repeats, "torch_threads": default_threads,
      "latency_ms": {k: round(v * 1e3, 3) for k, v in latency.items()},
      "min_latency_ms": {k: round(v * 1e3, 3) for k, v in fastest.items()},
      "cpu_ms": {k: round(t.cpu_median_s * 1e3, 3) for k, t in times.items()},
      "torch_over_jax": {k: latency[k] / latency["jax"] for k in ("torch", "torch_1_thread")},
      "torch_over_jax_of_min_latency": {k: fastest[k] / fastest["jax"] for k in ("torch", "torch_1_thread")},
      "max_abs_diff_torch_vs_jax": max_abs_diff, "jax_compile_s": round(compile_s, 3),
      "export_s": export_s, "torch_load_s": round(load_s, 3), "file_bytes": info["bytes"],
      "tensors": info["tensors"], "predicted_bytes": export.predicted_size(model_cfg)["bytes"],
      "paper": None if paper is None else {"float32": export.predicted_size(paper),
                                           "bfloat16": export.predicted_size(paper, "bfloat16")},
  }


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/sim.py")
  print(json.dumps(bench_torch_export(_CONFIG.value.model, _BATCH.value, _REPEATS.value, _SEED.value), indent=2))


if __name__ == "__main__":
  from lamp_jax import allocator

  allocator.reexec_with_tcmalloc("lamp_jax.perf.export_bench")  # XLA:CPU runs 1.75x faster on it (allocator.py)
  app.run(main)
