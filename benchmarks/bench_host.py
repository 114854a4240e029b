"""Benchmark: host time per optimisation step under data parallelism.

1. **Per-process assembly** with 1, 2 and 4 local processes at the same global batch
   (``--per-step`` batches of ``--batch`` molecules per step over all processes).
   The previous method: every process assembles every batch of the epoch and keeps
   its own (what training did before ``process_slots``); now each process
   assembles only its own slots (``ProcessSlots``). Each process runs one epoch
   with ``prefetch=0``, one after another (``--concurrent``: at the same time, which
   on a machine with fewer cores than processes adds contention noise); the
   figure is each process's CPU time spent in the loader per step (the mean over
   the processes, best of ``--repeats`` runs).
2. **Main-thread time per step** (one process, all slots): the previous path
   stacks the step's batches and transfers every key on the main thread
   (``jax.device_put`` per array); now :meth:`PackedMemmapLoader.packed_steps`
   stacks and transfers the whole step with one ``device_put`` of the batch tree
   in the prefetch thread. Each step is followed by a simulated device step
   (``--step-ms`` of sleep, which releases the GIL as a running XLA computation
   does); the figure is the wall time per step beyond it.

Usage::

    python benchmarks/bench_host.py                  # 100k QM9-like molecules
    python benchmarks/bench_host.py --n-mol 20000    # quicker
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_loader import write_qm9_like
from physpack.data.loader import PackedMemmapLoader, ProcessSlots


# -- part 1: per-process assembly ---------------------------------------------------
def process_child(path: str, per_step: int, batch: int, procs: int, p: int, mode: str):
    """One process of a ``procs``-process job: one epoch; prints JSON."""
    per = per_step // procs
    slots = ProcessSlots(per_step, first=p * per, count=per)
    own = mode == "own"
    loader = PackedMemmapLoader(
        path, batch, seed=1, prefetch=0, process_slots=slots if own else None
    )
    loader.num_batches()  # plan the epoch outside the timing
    kept = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for b, item in enumerate(loader.packed_batches()):
        if item is not None and slots.owns(b):  # the previous method drops the rest
            kept += 1
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    steps = -(-loader.num_batches(0) // per_step)
    print(json.dumps({"cpu_s": cpu, "wall_s": wall, "steps": steps, "kept": kept}))


def part_processes(
    path: Path, per_step: int, batch: int, repeats: int, concurrent: bool
) -> None:
    for _ in PackedMemmapLoader(path, batch, prefetch=0).packed_batches():
        pass  # warm the page cache
    rows = []
    for procs in (1, 2, 4):
        row = {"procs": procs}
        for mode in ("all", "own") * repeats:
            jobs, out = [], []
            for p in range(procs):
                cmd = [str(path), per_step, batch, procs, p, mode]
                jobs.append(
                    subprocess.Popen(
                        [sys.executable, __file__, "--child", json.dumps(cmd)],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
                if not concurrent:
                    out.append(jobs[-1].communicate()[0])
            out = out or [j.communicate()[0] for j in jobs]
            if any(j.returncode for j in jobs):
                raise RuntimeError("a benchmark process failed")
            got = [json.loads(o.strip().splitlines()[-1]) for o in out]
            ms = 1e3 * np.mean([g["cpu_s"] / g["steps"] for g in got])
            row[mode] = min(ms, row.get(mode, np.inf))  # best of the repeats
            row[f"{mode}_kept"] = sum(g["kept"] for g in got)
        rows.append(row)
    base = rows[0]["own"]
    print(
        f"\n## Host time per step, {per_step} batches of {batch} molecules per step "
        f"(global), processes run {'at once' if concurrent else 'one after another'}"
    )
    print(
        "| processes | previous: every batch (ms CPU/step/process) | own batches "
        "only | speed-up | own time × P / 1-process time |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        assert r["all_kept"] == r["own_kept"]  # the same batches are trained on
        print(
            f"| {r['procs']} | {r['all']:.2f} | {r['own']:.2f} | "
            f"{r['all'] / r['own']:.2f}× | {r['own'] * r['procs'] / base:.2f} |"
        )


# -- part 2: main-thread time -------------------------------------------------------
def part_main_thread(path: Path, per_step: int, batch: int, step_ms: float) -> None:
    import jax

    slots = ProcessSlots(per_step)
    n_steps = min(200, PackedMemmapLoader(path, batch).num_batches() // per_step - 1)

    def previous() -> float:
        loader = PackedMemmapLoader(path, batch, seed=2, prefetch=2)
        it = loader.packed_batches()
        t0 = time.perf_counter()
        for _ in range(n_steps):
            group = [next(it) for _ in range(per_step)]
            placed = {
                k: jax.device_put(np.stack([b[k] for b in group])) for k in group[0]
            }
            jax.block_until_ready(placed)
            time.sleep(step_ms / 1e3)
        it.close()
        return (time.perf_counter() - t0) / n_steps * 1e3 - step_ms

    def in_prefetch() -> float:
        def transfer(group: list[dict]) -> dict:
            stacked = {k: np.stack([b[k] for b in group]) for k in group[0]}
            return jax.block_until_ready(jax.device_put(stacked))

        loader = PackedMemmapLoader(
            path, batch, seed=2, prefetch=2, process_slots=slots
        )
        it = loader.packed_steps(transfer)
        t0 = time.perf_counter()
        for _ in range(n_steps):
            next(it)
            time.sleep(step_ms / 1e3)
        it.close()
        return (time.perf_counter() - t0) / n_steps * 1e3 - step_ms

    previous(), in_prefetch()  # warm up (JAX backend, page cache)
    old, new = previous(), in_prefetch()
    print(
        f"\n## Main-thread time per step beyond a {step_ms:g} ms device step "
        f"({per_step} batches of {batch} molecules, JAX {jax.default_backend()})"
    )
    print(
        "| previous: stack + per-key device_put on the main thread | packed_steps "
        "(stack + one device_put in the prefetch thread) | ratio |"
    )
    print("|---|---|---|")
    print(f"| {old:.3f} ms | {new:.3f} ms | {old / max(new, 1e-3):.1f}× |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-mol", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--per-step", type=int, default=4)
    ap.add_argument("--step-ms", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--concurrent", action="store_true", help="run the processes at the same time"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        process_child(*json.loads(args.child))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = write_qm9_like(Path(tmp) / "qm9", args.n_mol)
        part_processes(path, args.per_step, args.batch, args.repeats, args.concurrent)
        part_main_thread(path, args.per_step, args.batch, args.step_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
