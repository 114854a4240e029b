"""Does a stage honour its rule's ``threads:``? CPU time / wall time of a JAX
computation in a fresh process, with ``OMP_NUM_THREADS`` (which Snakemake sets to
the rule's threads) applied by ``physpack.cli.limit_cpu_threads`` and, as the
baseline, without it (plain JAX, which takes every core).

    python benchmarks/bench_threads.py [--size 3000] [--repeats 3]

"CPUs" is what the process may run on; "cores used" (CPU time / wall time)
cannot exceed it, and for the baseline it is the number of cores JAX takes on its
own (lower when other work loads the machine). "busy threads": threads that did
more than a tenth of the work (from /proc): XLA spreads work over several threads
whatever OMP_NUM_THREADS says, which is why physpack restricts the CPUs instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, time


def thread_ticks():
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


if sys.argv[1] == "limit":
    from physpack.cli import limit_cpu_threads
    limit_cpu_threads()
import jax, jax.numpy as jnp
n, repeats = int(sys.argv[2]), int(sys.argv[3])
x = jnp.ones((n, n), jnp.float32)
f = jax.jit(lambda a: jnp.tanh(a @ a).sum())
f(x).block_until_ready()
k0 = thread_ticks()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(repeats):
    f(x).block_until_ready()
t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
k1 = thread_ticks()
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
spent = [k1[t] - k0.get(t, 0) for t in k1]
busy = sum(1 for d in spent if d > 0.1 * max(sum(spent), 1))
cpus = len(os.sched_getaffinity(0))
print(json.dumps({"wall_s": t1 - t0, "cpu_s": cpu, "busy_threads": busy, "cpus": cpus}))
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
    print(
        f"{'run':<40} {'CPUs':>4} {'wall s':>7} {'cpu s':>7} {'cores used':>10}"
        f" {'busy threads':>12}"
    )
    runs = [("baseline: plain JAX, no limit", "plain", None)]
    runs += [(f"physpack, threads {n}", "limit", n) for n in range(1, cores)]
    runs += [(f"baseline: plain JAX, OMP_NUM_THREADS={1}", "plain", 1)]
    for label, mode, threads in runs:
        r = measure(mode, threads, args.size, args.repeats)
        used = r["cpu_s"] / r["wall_s"]
        print(
            f"{label:<40} {r['cpus']:4d} {r['wall_s']:7.2f} {r['cpu_s']:7.2f} {used:10.2f}"
            f" {r['busy_threads']:12d}"
        )


if __name__ == "__main__":
    main()
