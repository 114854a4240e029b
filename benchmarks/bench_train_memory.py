"""Where a training's resident memory goes: RSS over time of a short training of
the shipped recipe, with the training's own log lines placed on the timeline.

The ``model``, ``train`` and ``loader`` sections of ``config.yaml`` (the schema's
defaults for the rest), ``train.max_minutes`` set to ``--minutes``, on a packed
directory and split such as those ``bench_accuracy.py`` prepares. RSS is read
from ``/proc/self/status`` every 0.2 s by a thread; the peak is the kernel's
``ru_maxrss``. Run it once per setting to compare, e.g. XLA's flags::

    python benchmarks/bench_train_memory.py --packed acc/transfer/packed \\
        --split acc/transfer/split.npz --minutes 0.6
    XLA_FLAGS=--xla_cpu_use_fusion_emitters=false python benchmarks/bench_train_memory.py ...
    MALLOC_ARENA_MAX=2 python benchmarks/bench_train_memory.py ...

``XLA_FLAGS=--xla_dump_to=DIR`` adds XLA's buffer assignment of every compiled
program (``DIR/*jit_train_step*memory-usage-report.txt``: the step's own buffers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))


def rss_gib() -> float:
    """This process's resident set size now [GiB]."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packed", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=0.6)
    parser.add_argument("--every", type=float, default=5.0, help="timeline step [s]")
    args = parser.parse_args()

    t0 = time.perf_counter()
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter() - t0, rss_gib()))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    import numpy as np
    from bench_accuracy import recipe_sections
    from physpack.data.packed_dataset import PackedDataset
    from physpack.training.train import train

    z_max = int(np.max(PackedDataset(args.packed).Z))
    sections = recipe_sections(z_max, args.minutes, [])[:3]
    marks: list[tuple[float, float, str]] = []

    def log(message: str) -> None:
        marks.append((time.perf_counter() - t0, rss_gib(), message[:90]))

    with tempfile.TemporaryDirectory(prefix="bench_train_memory_") as tmp:
        out = Path(tmp)
        train(
            args.packed,
            args.split,
            out / "best.ckpt",
            out / "history.csv",
            out / "state",
            *sections,
            progress=False,
            log=log,
        )
    done.set()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    env = {k: os.environ.get(k) for k in ("XLA_FLAGS", "MALLOC_ARENA_MAX")}
    print(json.dumps({"peak_rss_GiB": round(peak, 3), "env": env}))
    print("time [s]  RSS [GiB]  log line")
    for t, rss, message in marks:
        print(f"{t:8.1f}  {rss:9.3f}  {message}")
    print("timeline: time [s]  RSS [GiB]")
    last = -args.every
    for t, rss in samples:
        if t - last >= args.every:
            print(f"{t:8.1f}  {rss:9.3f}")
            last = t
    return 0


if __name__ == "__main__":
    sys.exit(main())
