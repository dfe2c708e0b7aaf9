"""Serve a policy's ``sample_actions`` over a websocket: ``python -m lamp_jax.serve --checkpoint=DIR``.

  python -m lamp_jax.serve --checkpoint=/runs/libero/checkpoints [--host=127.0.0.1 --port=8000]
  python -m lamp_jax.serve --export=/runs/libero_torch --backend=torch [--device=cpu]   # no JAX imported
  python -m lamp_jax.serve --policy=random            # untrained baseline (uniform random deltas)

Backends: 'jax' serves a training checkpoint (``lamp_jax.eval.checkpoint_policy``, imported only then);
'torch' serves an export directory of ``python -m lamp_jax.export`` through ``lamp_torch`` — that process never
imports jax, flax or tensorflow (tests/test_torch_serve.py checks ``sys.modules``). Both answer the same
protocol (``lamp_jax/serving/server.py``) for the same JAX-free client (``lamp_jax.serving.client.PolicyClient``;
the LIBERO harness ``python -m lamp_jax.eval.libero`` uses it). An exported policy's observations are validated
against its config: every camera it reads is required (uint8[h, w, 3]; exactly the model's image size when the
export does not resize) and ``state`` must have the statistics' width, so a missing camera or a wrong image size
is an error reply naming the key, and the server goes on. The server binds to 127.0.0.1 unless ``--host`` says
otherwise: it runs whatever model it is given on inputs from anyone who can reach it.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from lamp_jax.serving import server as server_lib

BACKENDS = ("jax", "torch")
IMAGE_MAX_DIM = 4096  # the largest free image axis an exported policy accepts (as CheckpointPolicy's spec)


def observation_spec(policy) -> dict[str, server_lib.ArraySpec] | None:
  """The server's observation spec from the policy's own ``observation_spec()``: {key: ``ArraySpec``} (as
  ``CheckpointPolicy`` gives; used as is) or {key: (dtype, shape with None for any size, required)} (as the
  JAX-free ``lamp_torch.ExportedPolicy`` gives), or None for the server's default.

  The checks match ``CheckpointPolicy.observation_spec``'s: float entries must be finite, a free image axis takes
  up to ``IMAGE_MAX_DIM`` pixels (the policy resizes).
  """
  spec = getattr(policy, "observation_spec", None)
  if spec is None:
    return None
  out = {}
  for key, entry in spec().items():
    if isinstance(entry, server_lib.ArraySpec):
      out[key] = entry
      continue
    dtype, shape, required = entry
    size = {"max_dim": IMAGE_MAX_DIM} if dtype == "uint8" else {}
    out[key] = server_lib.ArraySpec(dtype, tuple(shape), required=required, finite=np.dtype(dtype).kind == "f",
                                    **size)
  return out


def build_policy(checkpoint: str | None, policy: str | None, step: int | None, seed: int, use_ema: bool,
                 export: str | None = None, backend: str | None = None, device: str = "cpu",
                 torch_threads: int = 0):
  """--checkpoint DIR, --export DIR or --policy SPEC ('random' | 'checkpoint:DIR') -> (policy, name)."""
  if sum(x is not None for x in (checkpoint, policy, export)) != 1:
    raise SystemExit("give exactly one of --checkpoint=DIR, --export=DIR or --policy=SPEC")
  if backend is not None and backend not in BACKENDS:
    raise SystemExit(f"--backend must be one of {BACKENDS}, got {backend!r}")
  if export is not None:
    if backend not in (None, "torch"):
      raise SystemExit("--export serves an export directory with --backend=torch; the JAX backend serves the "
                       "training checkpoint (--checkpoint=DIR)")
    import lamp_torch  # pylint: disable=g-import-not-at-top  (torch; no JAX)
    import torch  # pylint: disable=g-import-not-at-top

    if torch_threads:  # on a host shared with other jobs one intra-op thread can be much faster (README)
      torch.set_num_threads(int(torch_threads))

    return lamp_torch.from_pretrained(export, device=device, seed=seed), f"export:{export} (torch, {device})"
  if backend == "torch":
    raise SystemExit("--backend=torch serves an export directory: write one with python -m lamp_jax.export "
                     "--checkpoint=DIR --out=EXPORT, then serve --export=EXPORT")
  if checkpoint is not None:
    from lamp_jax.eval import checkpoint_policy  # pylint: disable=g-import-not-at-top  (imports JAX)

    return (checkpoint_policy.CheckpointPolicy(checkpoint, step=step, use_ema=use_ema, seed=seed),
            f"checkpoint:{checkpoint}")
  if policy == "expert":
    raise SystemExit("the scripted expert reads the simulator state and cannot be served; use 'random' or "
                     "'checkpoint:DIR'")
  from lamp_jax.eval import policies  # pylint: disable=g-import-not-at-top

  return policies.make_policy(policy, seed=seed), policy


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", default=None, help="training checkpoint directory (or the run's workdir)")
  p.add_argument("--export", default=None, help="export directory of python -m lamp_jax.export (--backend=torch)")
  p.add_argument("--backend", default=None, choices=BACKENDS,
                 help="'jax' (checkpoints, the default there) or 'torch' (export directories, the default there)")
  p.add_argument("--device", default="cpu", help="torch backend: 'cpu' or 'cuda'")
  p.add_argument("--torch-threads", type=int, default=0,
                 help="torch backend: intra-op CPU threads (0 = torch's default, one per core)")
  p.add_argument("--policy", default=None, help="instead of --checkpoint: 'random' or 'checkpoint:DIR'")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--no-ema", action="store_true", help="use the raw parameters even when EMA ones exist")
  p.add_argument("--seed", type=int, default=0, help="seed of the policy's sampling noise")
  p.add_argument("--host", default=server_lib.DEFAULT_HOST, help="interface to bind (default 127.0.0.1)")
  p.add_argument("--port", type=int, default=server_lib.DEFAULT_PORT)
  p.add_argument("--max-message-mb", type=float, default=server_lib.DEFAULT_MAX_MESSAGE_BYTES / 2**20,
                 help="requests larger than this get an error reply")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  kwargs = {"checkpoint": args.checkpoint, "policy": args.policy, "step": args.step, "seed": args.seed,
            "use_ema": not args.no_ema, "export": args.export, "backend": args.backend, "device": args.device,
            "torch_threads": args.torch_threads}
  if args.policy is not None and args.policy.startswith("checkpoint:"):
    kwargs["checkpoint"], kwargs["policy"] = args.policy[len("checkpoint:"):], None
  if kwargs["policy"] is not None or kwargs["export"] is not None:
    if args.step is not None or args.no_ema:
      raise SystemExit("--step / --no-ema only apply to checkpoints (an export holds one set of parameters)")
  policy, name = build_policy(**kwargs)
  server = server_lib.PolicyServer(policy, observation_spec=observation_spec(policy), host=args.host,
                                   port=args.port, max_message_bytes=int(args.max_message_mb * 2**20), name=name)
  logging.info("serving %s (action horizon %d) on ws://%s:%d", name, policy.action_horizon, server.host,
               server.port)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.shutdown()


if __name__ == "__main__":
  main()
