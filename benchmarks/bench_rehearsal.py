"""Scaling rehearsal: a synthetic sharded dataset of ``--molecules`` (default 10⁷)
QM9-sized molecules through the data stages, each measured in its own process.

1. ``--shards`` padded NPZ shards are written (a base of 50,000 generated molecules
   tiled; the stages' work does not depend on molecules being distinct);
2. they are converted by ``--jobs`` concurrent ``physpack convert`` processes (as
   Snakemake runs the ``convert_shard`` jobs) and described
   (``results/data/dataset.json``-style descriptor);
3. ``physpack split``, ``physpack stats`` and one epoch of the training loader
   (every packed batch of the whole dataset assembled, no model)
   run on the sharded dataset, each in a fresh process: wall time, peak RSS, and
   the loader's index memory per molecule (anonymous RSS after the epoch minus
   after opening the dataset; the mapped data are page cache). Batches of 32 molecules with all pairs (the
   loader benchmarks' setting; pairs within the cutoff add a counting pass over
   the positions and a neighbour search per batch).

Beside each figure the same stage on one shard (``1/S`` of the data) is printed:
the ratio shows whether time grows linearly and memory stays flat.

    python benchmarks/bench_rehearsal.py --molecules 10000000 --shards 8 --jobs 2 \\
        --workdir /tmp/rehearsal
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_convert import measure_parallel, tiled_npz

BASE = 50_000

_STAGE = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np

def rss_mb(field="RssAnon"):
    # anonymous memory: the memory-mapped data's pages are page cache, not ours
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) / 1024

stage, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
import physpack.data.loader, physpack.data.split, physpack.data.stats
from physpack.config import LoaderConfig, SplitConfig
from physpack.data.descriptor import open_dataset
base = rss_mb()
t0 = time.perf_counter()
result = {}
if stage == "split":
    split = physpack.data.split.make_split(path, SplitConfig(valid=0.05, test=0.05))
    result["n_train"] = int(split.train.size)
elif stage == "stats":
    stats = physpack.data.stats.packing_stats(path, LoaderConfig(batch_size=32))
    result["packed_atom_efficiency"] = stats["padding"]["packed"]["atom_efficiency"]
    result["packed_pair_efficiency"] = stats["padding"]["packed"]["pair_efficiency"]
elif stage == "epoch":
    ds = open_dataset(path)
    opened = rss_mb()
    loader = physpack.data.loader.PackedMemmapLoader(ds, batch_size=32, prefetch=2)
    result["open_MB"] = opened - base
    t1 = time.perf_counter()
    n = 0
    for batch in loader.packed_batches():
        n += int(batch["molecule_mask"].sum())
    result["epoch_s"] = time.perf_counter() - t1
    # after the epoch: sizes, subset, the epoch's plan (order and bounds)
    result["index_bytes_per_molecule"] = (rss_mb() - opened) * 2**20 / ds.n_molecules
    result["setup_s"] = t1 - t0
    result["molecules_per_s"] = n / result["epoch_s"]
    assert n == ds.n_molecules, (n, ds.n_molecules)
result["seconds"] = time.perf_counter() - t0
result["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result["anon_MB"] = rss_mb()
result["import_rss_MB"] = base
Path(out).write_text(json.dumps(result))
"""


def stage(name: str, dataset: Path, tmp: Path) -> dict:
    out = tmp / f"{name}.json"
    subprocess.run(
        [sys.executable, "-c", _STAGE, name, str(dataset), str(out)], check=True
    )
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2, help="concurrent conversions")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    from physpack.data.descriptor import describe_shards
    from physpack.data.synthetic import write_padded_npz

    tmp = Path(tempfile.mkdtemp(prefix="rehearsal_", dir=args.workdir))
    try:
        reps = max(1, round(args.molecules / args.shards / BASE))
        t0 = time.perf_counter()
        write_padded_npz(tmp / "base.npz", BASE, seed=0, amax=29)
        npzs = [
            tiled_npz(tmp / "base.npz", tmp / f"shard{k:03d}.npz", reps)
            for k in range(args.shards)
        ]
        n_mol = reps * BASE * args.shards
        npz_gb = sum(p.stat().st_size for p in npzs) / 1e9
        print(
            f"{n_mol:,} molecules in {args.shards} shard NPZs, {npz_gb:.1f} GB "
            f"(written in {time.perf_counter() - t0:.0f} s)"
        )
        convert = [sys.executable, "-m", "physpack.data.convert"]
        flags = ["--no-progress"]
        outs = [tmp / "shards" / p.stem for p in npzs]
        conv = {"seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_MB": 0.0}
        for a in range(0, len(npzs), args.jobs):  # waves of --jobs at once
            got = measure_parallel(
                [
                    [*convert, str(f), str(o), *flags]
                    for f, o in zip(npzs[a : a + args.jobs], outs[a : a + args.jobs])
                ]
            )
            conv["seconds"] += got["seconds"]
            conv["cpu_seconds"] += got["cpu_seconds"]
            conv["peak_rss_MB"] = max(conv["peak_rss_MB"], got["peak_rss_MB"])
        for p in npzs:
            p.unlink()
        dataset = describe_shards(tmp / "dataset.json", outs)
        one = describe_shards(tmp / "one_shard.json", outs[:1])
        packed_gb = (
            sum(f.stat().st_size for o in outs for f in o.iterdir() if f.is_file())
            / 1e9
        )
        print(
            f"converted with {args.jobs} concurrent jobs in {conv['seconds']:.0f} s "
            f"({npz_gb * 1e3 / conv['seconds']:.0f} MB/s of NPZ, "
            f"{conv['cpu_seconds']:.0f} CPU s), peak RSS per job "
            f"{conv['peak_rss_MB']:.0f} MB; packed {packed_gb:.1f} GB"
        )
        rows = []
        for name in ("split", "stats", "epoch"):
            whole, part = stage(name, dataset, tmp), stage(name, one, tmp)
            rows.append((name, whole, part))
        print(
            f"\n{'stage':<8} {'all shards [s]':>15} {'one shard [s]':>14} "
            f"{'ratio':>6} {'peak RSS all [MB]':>18} {'one [MB]':>9} {'anon all [MB]':>14}"
        )
        for name, whole, part in rows:
            print(
                f"{name:<8} {whole['seconds']:15.1f} {part['seconds']:14.1f} "
                f"{whole['seconds'] / part['seconds']:6.1f} "
                f"{whole['peak_rss_MB']:18.0f} {part['peak_rss_MB']:9.0f} "
                f"{whole['anon_MB']:14.0f}"
            )
        epoch = rows[2][1]
        print(
            f"\nloader: {epoch['molecules_per_s']:,.0f} molecules/s over the epoch, "
            f"index {epoch['index_bytes_per_molecule']:.1f} B/molecule, dataset "
            f"opened in {epoch['open_MB']:.1f} MB, set up in {epoch['setup_s']:.1f} s; "
            f"packed efficiency (stats) atoms "
            f"{100 * rows[1][1]['packed_atom_efficiency']:.1f} %, pairs "
            f"{100 * rows[1][1]['packed_pair_efficiency']:.1f} %"
        )
        print(f"imports alone: {epoch['import_rss_MB']:.0f} MB RSS")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
