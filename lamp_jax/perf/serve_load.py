r"""Load on the policy server over loopback: C concurrent clients x N requests, round-trip percentiles and errors.

  python -m lamp_jax.perf.serve_load --policy=random --clients=20 --requests=50
  python -m lamp_jax.perf.serve_load --policy=checkpoint:/tmp/run --clients=20 --requests=50
  python -m lamp_jax.perf.serve_load --connect=127.0.0.1:8000 --clients=4 --requests=200   # a running server

Without ``--connect`` the server is started as its own process (``python -m lamp_jax.serve --policy=SPEC
--port=0`` on 127.0.0.1) and stopped at the end, so client and server do not share an interpreter. Every client
is a thread with its own websocket connection: it sends one ``reset`` and then ``--requests`` ``infer`` requests
back to back. Observations are random arrays that follow the server's ``health`` observation spec (wildcard image
sides take ``--image-size``). The policy serves one request at a time (server.py), so with C clients a request
waits for up to C - 1 others: p50 / p99 measure that queue plus the policy's own time (``policy_ms``, reported
by the server). Prints one JSON object: counts, errors (and the first error messages), round trip p50 / p90 / p99 /
max in ms, throughput, server-side policy_ms p50.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np

from lamp_jax.serving import client as client_lib


def _shape(entry: dict, image_size: int) -> tuple[int, ...]:
  dims = [int(d) for d in entry["shape"]]
  if len(dims) == 3:  # an image [H, W, C]: wildcard sides take image_size, a wildcard channel axis 3
    return tuple(image_size if d < 0 else d for d in dims[:2]) + (3 if dims[2] < 0 else dims[2],)
  return tuple(8 if d < 0 else d for d in dims)  # a wildcard state: the simulator's 8


def observation_from_spec(spec: dict, rng: np.random.Generator, image_size: int) -> dict:
  """Random arrays of the health reply's ``observation_spec`` (every key, required or not)."""
  obs = {}
  for key, entry in spec.items():
    shape = _shape(entry, image_size)
    if entry["dtype"] == "uint8":
      obs[key] = rng.integers(0, 256, size=shape, dtype=np.uint8)
    else:
      obs[key] = rng.normal(size=shape).astype(entry["dtype"])
  return obs


def _client(host: str, port: int, requests: int, image_size: int, seed: int, out: dict) -> None:
  rng = np.random.default_rng(seed)
  round_trips, policy_ms, errors = [], [], []
  try:
    with client_lib.PolicyClient(host, port) as client:
      spec = client.health()["observation_spec"]
      client.reset("put the red cube on the plate")
      for _ in range(requests):
        obs = observation_from_spec(spec, rng, image_size)
        try:
          client.infer(obs)
          round_trips.append(client.last_timing["round_trip_ms"])
          policy_ms.append(client.last_timing.get("policy_ms", float("nan")))
        except client_lib.PolicyServerError as e:
          errors.append(str(e))
  except Exception as e:  # pylint: disable=broad-except  (a connection failure counts as errors)
    errors.append(f"{type(e).__name__}: {e}")
    errors.extend(["(not sent)"] * max(0, requests - len(round_trips) - len(errors)))
  out.update(round_trips=round_trips, policy_ms=policy_ms, errors=errors)


def start_server(policy: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
  """``python -m lamp_jax.serve --policy=SPEC --port=0`` as a process; returns (process, port)."""
  proc = subprocess.Popen([sys.executable, "-m", "lamp_jax.serve", f"--policy={policy}", "--port=0"],
                          stderr=subprocess.PIPE, text=True, env=env or dict(os.environ, PYTHONUNBUFFERED="1"))
  for line in proc.stderr:
    match = re.search(r"on ws://127\.0\.0\.1:(\d+)", line)
    if match:
      threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep the pipe drained
      return proc, int(match.group(1))
  proc.wait()
  raise RuntimeError(f"the policy server ({policy}) exited with {proc.returncode} before listening")


def run_load(host: str, port: int, clients: int, requests: int, image_size: int) -> dict:
  results = [dict() for _ in range(clients)]
  threads = [threading.Thread(target=_client, args=(host, port, requests, image_size, i, results[i]))
             for i in range(clients)]
  t0 = time.perf_counter()
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  wall = time.perf_counter() - t0
  rtt = np.array([x for r in results for x in r["round_trips"]], np.float64)
  pol = np.array([x for r in results for x in r["policy_ms"]], np.float64)
  errors = [e for r in results for e in r["errors"]]
  pct = lambda a, q: round(float(np.percentile(a, q)), 2) if a.size else None  # noqa: E731
  return {"clients": clients, "requests_per_client": requests, "ok": int(rtt.size), "errors": len(errors),
          "first_errors": sorted(set(errors))[:3], "round_trip_ms": {"p50": pct(rtt, 50), "p90": pct(rtt, 90),
                                                                      "p99": pct(rtt, 99), "max": pct(rtt, 100)},
          "policy_ms_p50": pct(pol, 50), "throughput_per_s": round(rtt.size / wall, 1), "wall_s": round(wall, 2)}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  p.add_argument("--policy", default="random", help="what to serve: 'random' or 'checkpoint:DIR' (default random)")
  p.add_argument("--connect", default=None, help="HOST:PORT of a running server instead of starting one")
  p.add_argument("--clients", type=int, default=20, help="concurrent connections (default 20)")
  p.add_argument("--requests", type=int, default=50, help="infer requests per client (default 50)")
  p.add_argument("--image-size", type=int, default=64, help="side of images whose spec allows any size")
  args = p.parse_args(argv)
  proc = None
  if args.connect:
    host, port = args.connect.rsplit(":", 1)
    port = int(port)
  else:
    proc, port = start_server(args.policy)
    host = "127.0.0.1"
  try:
    result = run_load(host, port, args.clients, args.requests, args.image_size)
  finally:
    if proc is not None:
      proc.terminate()
      proc.wait()
  print(json.dumps({"policy": args.policy if not args.connect else args.connect, **result}), flush=True)


if __name__ == "__main__":
  main()
