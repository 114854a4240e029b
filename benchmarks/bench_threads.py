"""Does a stage honour its rule's ``threads:``? CPU time / wall time of a JAX
computation in a fresh process, with ``OMP_NUM_THREADS`` (which Snakemake sets to
the rule's threads) applied by ``physpack.cli.limit_cpu_threads`` and, as the
baseline, without it (plain JAX, which takes every core).

    python benchmarks/bench_threads.py [--size 3000] [--repeats 3]

A ratio near n for ``threads n`` means the limit holds; the baseline's ratio is
the number of cores JAX uses on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
if sys.argv[1] == "limit":
    from physpack.cli import limit_cpu_threads
    limit_cpu_threads()
import jax, jax.numpy as jnp
n, repeats = int(sys.argv[2]), int(sys.argv[3])
x = jnp.ones((n, n), jnp.float32)
f = jax.jit(lambda a: jnp.tanh(a @ a).sum())
f(x).block_until_ready()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(repeats):
    f(x).block_until_ready()
t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(json.dumps({"wall_s": t1 - t0, "cpu_s": cpu}))
"""


def measure(mode: str, threads: int | None, size: int, repeats: int) -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env.pop("XLA_FLAGS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(size), str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores available; matmul {args.size}x{args.size}, {args.repeats}x")
    print(f"{'run':<34} {'wall s':>8} {'cpu s':>8} {'cores used':>11}")
    runs = [("baseline: plain JAX, no limit", "plain", None)]
    runs += [(f"physpack, threads {n}", "limit", n) for n in range(1, cores)]
    runs += [(f"baseline: plain JAX, OMP_NUM_THREADS={1}", "plain", 1)]
    for label, mode, threads in runs:
        r = measure(mode, threads, args.size, args.repeats)
        used = r["cpu_s"] / r["wall_s"]
        print(f"{label:<34} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} {used:11.2f}")


if __name__ == "__main__":
    main()
