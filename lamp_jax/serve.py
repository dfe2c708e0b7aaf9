"""Serve a policy's ``sample_actions`` over a websocket: ``python -m lamp_jax.serve --checkpoint=DIR``.

  python -m lamp_jax.serve --checkpoint=/runs/libero/checkpoints [--host=127.0.0.1 --port=8000]
  python -m lamp_jax.serve --policy=random            # untrained baseline (uniform random deltas)

The protocol is documented in ``lamp_jax/serving/server.py``; ``lamp_jax.serving.client.PolicyClient`` is the
JAX-free client (the LIBERO harness ``python -m lamp_jax.eval.libero`` uses it). The server binds to 127.0.0.1
unless ``--host`` says otherwise: it runs whatever model it is given on inputs from anyone who can reach it.
"""

from __future__ import annotations

import argparse
import logging

from lamp_jax.serving import server as server_lib


def build_policy(checkpoint: str | None, policy: str | None, step: int | None, seed: int, use_ema: bool):
  """--checkpoint DIR or --policy SPEC ('random' | 'checkpoint:DIR') -> (policy, name)."""
  if (checkpoint is None) == (policy is None):
    raise SystemExit("give exactly one of --checkpoint=DIR or --policy=SPEC")
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
            "use_ema": not args.no_ema}
  if args.policy is not None and args.policy.startswith("checkpoint:"):
    kwargs["checkpoint"], kwargs["policy"] = args.policy[len("checkpoint:"):], None
  if kwargs["policy"] is not None:
    if args.step is not None or args.no_ema:
      raise SystemExit("--step / --no-ema only apply to checkpoints")
  policy, name = build_policy(**kwargs)
  server = server_lib.PolicyServer(policy, host=args.host, port=args.port,
                                   max_message_bytes=int(args.max_message_mb * 2**20), name=name)
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
