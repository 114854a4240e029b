"""Benchmark: physpack.data.loader against the previous loader's approach, side by side.

The previous approach (the older packed-memmap loader): molecules shuffled, sorted
by size inside buckets of 8192, cut into chunks of ``batch_size`` per bucket (so each
bucket ends with a shorter batch), each molecule copied into arrays padded to
``num_atoms`` = 60 in a Python loop, and pair indices rebuilt for every batch. Two
versions are timed: "as written" (arrays converted with ``jnp.array``, pair indices
from ``e3x.ops.sparse_pairwise_indices(60)``, not offset per molecule, which was its
bug) and "numpy" (numpy output, all ``60·59`` pairs of every molecule slot with the
per-molecule offsets a correct version needs; faster than the original, so the
stricter baseline). The new loader is timed with numpy output and, comparable with
"as written", with ``jax.device_put`` of every batch.

Measured on a synthetic QM9-like packed set (and ``data/demo.npz`` when present),
batch_size 64:

* throughput of batch assembly, molecules/s, single-threaded (``prefetch=0``), over
  a whole epoch (including its planning), wall-clock and process CPU time, the
  fastest of ``--repeat`` passes (5) for every figure, old and new alike (on a
  shared machine other work only ever adds time, and the demo epoch lasts ~10 ms);
  every packed pass is a new epoch, and every pass of the old approach takes its
  own ``--old-batches`` batches where the epoch has enough (not one subset again
  from a warm CPU cache); the first pass's molecule counts;
* padding efficiency: real atoms / atom slots, real pairs / pair slots;
* distinct batch shapes over an epoch;
* resident memory of a loader over a 10k- and a ≥2M-molecule packed set (each in a
  fresh subprocess): anonymous RSS (memory the process owns) and file-backed RSS
  (pages of memory-mapped files; page cache, shared and reclaimable), after
  construction and epoch planning, and anonymous RSS after a whole epoch.

Usage::

    python benchmarks/bench_loader.py            # 100k QM9-like + 10k/2M RSS
    python benchmarks/bench_loader.py --n-mol 20000 --big 200000   # quicker
    python benchmarks/bench_loader.py --giants   # a few giants among QM9-like ones
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from physpack.data.loader import PackedMemmapLoader
from physpack.data.packed import PackedDataset, PackedWriter
from physpack.data.padding import epoch_padding_stats
from physpack.data.synthetic import qm9_like_sizes

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
OLD_WIDTH = 60


# -- data ------------------------------------------------------------------------
def write_qm9_like(path: Path, n_mol: int, seed: int = 0, chunk: int = 250_000) -> Path:
    """A packed directory of ``n_mol`` molecules with QM9-like sizes and random
    contents, written chunk by chunk (fast; the loader does not look at values)."""
    rng = np.random.default_rng(seed)
    with PackedWriter(path, has_forces=True, has_dipoles=True) as w:
        for a in range(0, n_mol, chunk):
            n = qm9_like_sizes(min(chunk, n_mol - a), rng)
            t = int(n.sum())
            w.append(
                n_atoms=n,
                Z=rng.integers(1, 10, t, dtype=np.int32),
                R=rng.standard_normal((t, 3), dtype=np.float32),
                F=rng.standard_normal((t, 3), dtype=np.float32),
                E=rng.standard_normal(n.size),
                Qtot=np.zeros(n.size),
                D=rng.standard_normal((n.size, 3)),
            )
    return path


def demo_packed(tmp: Path) -> Path | None:
    """``data/demo.npz`` converted to a packed directory, or None when absent."""
    npz = ROOT / "data" / "demo.npz"
    if not npz.exists():
        return None
    out = tmp / "demo_packed"
    try:
        from physpack.data.convert import convert_npz

        convert_npz(npz, out)
        return out
    except ImportError:
        pass
    with np.load(npz) as d:  # fallback: unpad directly (demo data are small)
        z = d["Z"]
        n = d["N"] if "N" in d.files else (z > 0).sum(1)
        mask = np.arange(z.shape[1])[None, :] < n[:, None]
        has_f, has_d = "F" in d.files, "D" in d.files
        q = d["Q"] if "Q" in d.files else d.get("Qtot", np.zeros(len(n)))
        with PackedWriter(out, has_forces=has_f, has_dipoles=has_d) as w:
            arrays = {"Z": z[mask], "R": d["R"][mask], "E": d["E"], "Qtot": q}
            if has_f:
                arrays["F"] = d["F"][mask]
            if has_d:
                arrays["D"] = d["D"]
            w.append(n_atoms=n, **arrays)
    return out


# -- the previous approach -------------------------------------------------------------
class OldLoader:
    """The previous loader's algorithm (see the module docstring)."""

    def __init__(self, path: Path, batch_size: int, bucket_size: int = 8192, seed=0):
        self.offsets = np.load(path / "offsets.npy")  # index arrays loaded into RAM
        self.n_atoms = np.load(path / "n_atoms.npy")
        self.N = int(self.n_atoms.size)
        ds = PackedDataset(path)
        self.Z, self.R, self.F, self.E, self.Q = ds.Z, ds.R, ds.F, ds.E, ds.Qtot
        self.batch_size, self.bucket_size = batch_size, bucket_size
        self.rng = np.random.default_rng(seed)
        self.indices = np.arange(self.N, dtype=np.int64)

    def index_batches(self) -> list[np.ndarray]:
        order = self.indices.copy()
        self.rng.shuffle(order)
        out = []
        for a in range(0, self.N, self.bucket_size):
            chunk = order[a : a + self.bucket_size]
            chunk = chunk[np.argsort(self.n_atoms[chunk], kind="mergesort")]
            out += [
                chunk[b : b + self.batch_size]
                for b in range(0, chunk.size, self.batch_size)
            ]
        return out

    def pad(self, idx: np.ndarray, width: int) -> tuple[np.ndarray, ...]:
        """Molecules ``idx`` padded to ``width`` atoms, one Python loop iteration
        per molecule, as the older loader did: Z, R, F, N, E, Qtot."""
        B = idx.size
        Z = np.zeros((B, width), np.int32)
        R = np.zeros((B, width, 3), np.float32)
        F = np.zeros((B, width, 3), np.float32)
        N = np.zeros(B, np.int32)
        E = np.zeros(B)
        Q = np.zeros(B)
        for j, k in enumerate(idx):
            a0, a1 = int(self.offsets[k]), int(self.offsets[k + 1])
            n = a1 - a0
            Z[j, :n] = self.Z[a0:a1]
            R[j, :n] = self.R[a0:a1]
            F[j, :n] = self.F[a0:a1]
            N[j], E[j], Q[j] = n, self.E[k], self.Q[k]
        return Z, R, F, N, E, Q

    def assemble_as_written(self, idx: np.ndarray, width: int) -> dict:
        """The older loader's batch, as it was written (JAX arrays out)."""
        import e3x
        import jax.numpy as jnp

        B = idx.size
        Z, R, F, N, E, Q = self.pad(idx, width)
        batch = {
            k: jnp.array(v)
            for k, v in {"Z": Z, "R": R, "F": F, "N": N, "E": E, "Qtot": Q}.items()
        }
        dst, src = e3x.ops.sparse_pairwise_indices(width)
        batch |= {
            "dst_idx": dst,
            "src_idx": src,
            "batch_segments": np.repeat(np.arange(B), width).astype(np.int32),
        }
        return batch

    def assemble(self, idx: np.ndarray, width: int) -> dict[str, np.ndarray]:
        B = idx.size
        Z, R, F, N, E, Q = self.pad(idx, width)
        # pair indices rebuilt per batch (e3x.ops.sparse_pairwise_indices' recipe)
        dst = np.repeat(np.arange(width), width)
        src = np.tile(np.arange(width), width)
        diag = slice(0, width * width, width + 1)
        dst, src = np.delete(dst, diag), np.delete(src, diag)
        shift = (np.arange(B) * width)[:, None]
        mask = np.arange(width)[None, :] < N[:, None]
        return {
            "Z": Z,
            "R": R,
            "F": F,
            "N": N,
            "E": E,
            "Qtot": Q,
            "dst_idx": (dst[None] + shift).ravel(),
            "src_idx": (src[None] + shift).ravel(),
            "batch_segments": np.repeat(np.arange(B), width),
            "mask": mask,
        }


# -- measurements ------------------------------------------------------------------
def timed(batches, n_mol_of) -> tuple[float, float, int, int, set]:
    """Iterate; returns (wall s, cpu s, molecules, batches, distinct shapes)."""
    shapes: set = set()
    n = nb = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        n += n_mol_of(b)
        nb += 1
        shapes.add(tuple((k, v.shape) for k, v in sorted(b.items())))
    return time.perf_counter() - t0, time.process_time() - c0, n, nb, shapes


def best_of(make_batches, n_mol_of, repeat: int) -> tuple[float, float, int, int, set]:
    """:func:`timed` over ``repeat`` fresh iterators from ``make_batches()``: the
    shortest wall and CPU time (as ``timeit`` reports; a shared machine's
    interruptions only ever add time), with the first pass's counts."""
    runs = [timed(make_batches(), n_mol_of) for _ in range(repeat)]
    wall = min(r[0] for r in runs)
    cpu = min(r[1] for r in runs)
    return (wall, cpu, *runs[0][2:])


def bench_dataset(
    name: str, path: Path, max_old_batches: int, repeat: int = 5, use_jax: bool = True
) -> dict:
    ds = PackedDataset(path)
    sizes = np.asarray(ds.n_atoms, dtype=np.int64)
    real_atoms, real_pairs = int(sizes.sum()), int((sizes * (sizes - 1)).sum())
    res: dict = {
        "dataset": name,
        "n_molecules": int(sizes.size),
        "mean_atoms": float(sizes.mean()),
        "max_atoms_mol": int(sizes.max()),
        "repeat": repeat,
    }

    loader = PackedMemmapLoader(path, BATCH, prefetch=0)
    for _ in loader.packed_batches():  # warm the page cache (epoch 0)
        pass
    mols = lambda b: int(b["molecule_mask"].sum())
    # epochs 1, 2, ...: each pass is a whole epoch, its planning included
    wall, cpu, n, nb, shapes = best_of(loader.packed_batches, mols, repeat)
    b = loader.budget
    res["new"] = {
        "budget": [b.max_atoms, b.max_pairs, b.max_molecules],
        "mol_per_s_wall": n / wall,
        "mol_per_s_cpu": n / cpu,
        "n_batches": nb,
        "atom_eff": real_atoms / (nb * b.max_atoms),
        "pair_eff": real_pairs / (nb * b.max_pairs),
        "mol_eff": n / (nb * b.max_molecules),
        "shapes": len(shapes),
    }
    pre = PackedMemmapLoader(path, BATCH, prefetch=2)
    wall_p, _, n_p, _, _ = best_of(pre.packed_batches, mols, repeat)
    res["new"]["mol_per_s_wall_prefetch2"] = n_p / wall_p
    sorted_runs = epoch_padding_stats(path, batch_size=BATCH, mix_sizes=False)
    res["new_sorted_runs"] = {
        "atom_eff": sorted_runs["atom_efficiency"],
        "pair_eff": sorted_runs["pair_efficiency"],
    }
    dense_w = max(OLD_WIDTH, int(sizes.max()))
    wall_d, cpu_d, n_d, _, shapes_d = best_of(
        lambda: loader.batches(num_atoms=dense_w), mols, repeat
    )
    res["new_dense"] = {
        "mol_per_s_wall": n_d / wall_d,
        "mol_per_s_cpu": n_d / cpu_d,
        "shapes": len(shapes_d),
        "width": dense_w,
    }

    nan = float("nan")
    res["new"] |= {"mol_per_s_wall_device_put": nan, "mol_per_s_cpu_device_put": nan}
    if use_jax:
        import jax

        put = PackedMemmapLoader(path, BATCH, prefetch=0, device_put=True)
        wall_j, cpu_j, n_j, _, _ = best_of(put.packed_batches, mols, repeat)
        jax.block_until_ready(jax.numpy.zeros(1))
        res["new"] |= {
            "mol_per_s_wall_device_put": n_j / wall_j,
            "mol_per_s_cpu_device_put": n_j / cpu_j,
        }

    old = OldLoader(path, BATCH)
    index_batches = old.index_batches()
    counts = np.array([i.size for i in index_batches])
    # each pass its own batches where the epoch has enough (as each packed pass is a
    # new epoch): repeating one subset would time it from a warm CPU cache
    passes = [
        index_batches[a : a + max_old_batches]
        for a in range(0, len(index_batches), max_old_batches)
    ]
    subset = passes[0]
    for i in subset[:3] if use_jax else []:  # warm-up: e3x's index ops compile once
        old.assemble_as_written(i, dense_w)

    def rotated(assemble) -> Callable[[], Iterator[dict]]:
        turn = iter(range(repeat))
        return lambda: (assemble(i, dense_w) for i in passes[next(turn) % len(passes)])

    n_of = lambda b: int(b["N"].size)
    wall_w = cpu_w = n_w = nan
    if use_jax:
        wall_w, cpu_w, n_w, _, _ = best_of(
            rotated(old.assemble_as_written), n_of, repeat
        )
    wall_o, cpu_o, n_o, _, _ = best_of(rotated(old.assemble), n_of, repeat)
    slots = int(counts.sum())
    res["old"] = {
        "mol_per_s_wall": n_w / wall_w,
        "mol_per_s_cpu": n_w / cpu_w,
        "numpy_mol_per_s_wall": n_o / wall_o,
        "numpy_mol_per_s_cpu": n_o / cpu_o,
        "timed_batches": len(subset),
        "n_batches": len(index_batches),
        "atom_eff": real_atoms / (slots * dense_w),
        "pair_eff": real_pairs / (slots * dense_w * (dense_w - 1)),
        "shapes": len(set(counts.tolist())),
        "width": dense_w,
    }
    new, old_ = res["new"], res["old"]
    res["speedup"] = {
        "wall_vs_as_written": new["mol_per_s_wall"] / old_["mol_per_s_wall"],
        "cpu_vs_as_written": new["mol_per_s_cpu"] / old_["mol_per_s_cpu"],
        "device_put_wall_vs_as_written": (
            new["mol_per_s_wall_device_put"] / old_["mol_per_s_wall"]
        ),
        "wall_vs_numpy": new["mol_per_s_wall"] / old_["numpy_mol_per_s_wall"],
        "cpu_vs_numpy": new["mol_per_s_cpu"] / old_["numpy_mol_per_s_cpu"],
    }
    return res


def _rss() -> dict[str, int]:
    """RssAnon / RssFile of this process [bytes], from /proc/self/status."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def rss_child(path: str, which: str) -> None:
    """Run in a fresh process: RSS deltas of one loader over ``path`` (JSON)."""
    base = _rss()
    if which == "new":
        loader = PackedMemmapLoader(path, BATCH, prefetch=0)
        loader.num_batches()
        planned = _rss()
        for _ in loader.packed_batches():
            pass
        n = loader.n_molecules
    else:
        old = OldLoader(Path(path), BATCH)
        batches = old.index_batches()
        planned = _rss()
        for i in batches[:200]:
            old.assemble(i, OLD_WIDTH)
        n = old.N
    after = _rss()
    print(
        json.dumps(
            {
                "n": n,
                "planned_anon": planned["RssAnon"] - base["RssAnon"],
                "planned_file": planned["RssFile"] - base["RssFile"],
                "epoch_anon": after["RssAnon"] - base["RssAnon"],
                "epoch_file": after["RssFile"] - base["RssFile"],
            }
        )
    )


def measure_rss(path: Path, which: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(path), which],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- report ----------------------------------------------------------------------------
def report(results: list[dict], rss: dict | None) -> None:
    print(
        f"# physpack.data.loader benchmark (batch_size {BATCH}); numpy "
        f"{np.__version__}, Python {sys.version.split()[0]}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    for r in results:
        new, old, srt, den = r["new"], r["old"], r["new_sorted_runs"], r["new_dense"]
        up = r["speedup"]
        print(
            f"## {r['dataset']}: {r['n_molecules']} molecules, mean "
            f"{r['mean_atoms']:.1f} atoms, max {r['max_atoms_mol']}; packed budget "
            f"A={new['budget'][0]} P={new['budget'][1]} M={new['budget'][2]}"
        )
        print(
            f"{'':30}{'packed (new)':>14}{'old as written':>16}{'old numpy':>12}"
            f"{'target':>10}"
        )
        rows = [
            (
                "throughput mol/s, wall",
                new["mol_per_s_wall"],
                old["mol_per_s_wall"],
                old["numpy_mol_per_s_wall"],
                ">=200000",
            ),
            (
                "throughput mol/s, CPU time",
                new["mol_per_s_cpu"],
                old["mol_per_s_cpu"],
                old["numpy_mol_per_s_cpu"],
                "",
            ),
            (
                "speed-up of new, wall",
                None,
                up["wall_vs_as_written"],
                up["wall_vs_numpy"],
                ">=20x",
            ),
            (
                "speed-up of new, CPU time",
                None,
                up["cpu_vs_as_written"],
                up["cpu_vs_numpy"],
                ">=20x",
            ),
            (
                "atom efficiency",
                new["atom_eff"],
                old["atom_eff"],
                old["atom_eff"],
                ">=0.95",
            ),
            (
                "pair efficiency",
                new["pair_eff"],
                old["pair_eff"],
                old["pair_eff"],
                ">=0.90",
            ),
            (
                "distinct batch shapes/epoch",
                new["shapes"],
                old["shapes"],
                old["shapes"],
                "1",
            ),
            (
                "batches / epoch",
                new["n_batches"],
                old["n_batches"],
                old["n_batches"],
                "",
            ),
        ]
        for label, *values, target in rows:
            cells = []
            for v in values:
                if v is None or np.isnan(v):  # not measured, or without JAX (nan)
                    cells.append("")
                elif label.startswith("speed-up"):
                    cells.append(f"{v:.1f}x")
                elif isinstance(v, int) or v > 100:
                    cells.append(f"{v:,.0f}")
                else:
                    cells.append(f"{v:.3f}")
            print(f"{label:30}{cells[0]:>14}{cells[1]:>16}{cells[2]:>12}{target:>10}")
        print(
            f"- packed + jax.device_put per batch (comparable with 'as written', "
            f"which returns JAX arrays): {new['mol_per_s_wall_device_put']:,.0f} "
            f"mol/s wall, {up['device_put_wall_vs_as_written']:.1f}x"
        )
        print(
            f"- packed with prefetch=2: {new['mol_per_s_wall_prefetch2']:,.0f} mol/s "
            "wall"
        )
        print(
            f"- contiguous sorted runs instead of stratified (mix_sizes=False): "
            f"atoms {srt['atom_eff']:.3f}, pairs {srt['pair_eff']:.3f}"
        )
        print(
            f"- fixed dense form batches(num_atoms={den['width']}): "
            f"{den['mol_per_s_wall']:,.0f} mol/s wall, {den['shapes']} shape"
        )
        print(
            f"- old timed over {old['timed_batches']} batches; every figure the "
            f"fastest of {r['repeat']} passes\n"
        )
    if rss:
        print("## resident memory (fresh process per row; bytes per molecule)")
        print(
            f"{'':22}{'n molecules':>12}{'anon, planned':>15}{'file, planned':>15}"
            f"{'anon, epoch':>13}"
        )
        for label, m in rss.items():
            if not isinstance(m, dict):
                continue
            n = m["n"]
            print(
                f"{label:22}{n:>12,}{m['planned_anon'] / n:>15.2f}"
                f"{m['planned_file'] / n:>15.2f}{m['epoch_anon'] / n:>13.2f}"
            )
        for who in ("new", "old"):
            small, big = rss.get(f"{who} small"), rss.get(f"{who} big")
            if small and big:
                dn = big["n"] - small["n"]
                tot = lambda m: m["planned_anon"] + m["planned_file"]
                print(
                    f"{who}: difference big - small per molecule: anon+file after "
                    f"planning {(tot(big) - tot(small)) / dn:.2f} B, anon after an "
                    f"epoch {(big['epoch_anon'] - small['epoch_anon']) / dn:.2f} B"
                    + ("   (target <= 16)" if who == "new" else "")
                )


def batch_nbytes(loader: PackedMemmapLoader, kind: int) -> int:
    """Host bytes of one packed batch of budget ``kind``."""
    return sum(
        int(np.prod(shape)) * dt.itemsize
        for shape, dt in loader.batch_shapes(kind).values()
    )


def bench_giants(tmp: Path, n_mol: int = 5000) -> None:
    """QM9-sized molecules with a few large ones: one budget for all (the previous
    behaviour) beside giants in their own budget (``giant_atoms``)."""
    rng = np.random.default_rng(0)
    base = qm9_like_sizes(n_mol, rng)
    print(f"\n## Giant molecules among {n_mol} QM9-like ones, batch_size 32")
    print(
        "| giants | budgets | pair efficiency (normal batches) | atom efficiency | "
        "normal (A, P, M) | giant (A, P, M) | host bytes per normal batch |"
    )
    print("|---|---|---|---|---|---|---|")
    for giants in ([], [400], [3000, 3000]):
        path = tmp / f"giants_{len(giants)}_{sum(giants)}"
        with PackedWriter(path, has_forces=True, has_dipoles=False) as w:
            n = np.concatenate([base, giants]).astype(np.int32)
            t = int(n.sum())
            w.append(
                n_atoms=n,
                Z=np.ones(t, np.int32),
                R=rng.standard_normal((t, 3), dtype=np.float32),
                F=np.ones((t, 3), np.float32),
                E=np.zeros(n.size),
                Qtot=np.zeros(n.size),
            )
        label = ", ".join(map(str, giants)) or "none"
        for mode, kw in (("one", {}), ("giant_atoms=100", {"giant_atoms": 100})):
            if not giants and kw:
                continue
            st = epoch_padding_stats(path, batch_size=32, **kw)
            loader = PackedMemmapLoader(path, 32, prefetch=0, **kw)
            shapes = [dataclasses.astuple(b) for b in loader.budgets]
            print(
                f"| {label} | {mode} | {st['normal_pair_efficiency']:.3f} | "
                f"{st['normal_atom_efficiency']:.3f} | {shapes[0]} | "
                f"{shapes[1] if len(shapes) > 1 else '–'} | "
                f"{batch_nbytes(loader, 0) / 1e6:.2f} MB |"
            )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        rss_child(sys.argv[2], sys.argv[3])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n-mol",
        type=int,
        default=100_000,
        help="molecules of the QM9-like throughput set",
    )
    parser.add_argument("--small", type=int, default=10_000, help="small RSS set")
    parser.add_argument("--big", type=int, default=2_000_000, help="big RSS set")
    parser.add_argument(
        "--old-batches",
        type=int,
        default=300,
        help="batches of the old approach to time",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="passes per throughput figure; the fastest is reported (1: one pass)",
    )
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument(
        "--no-jax",
        action="store_true",
        help="leave out the two figures that need JAX (the old loader as written, "
        "device_put): for an environment without it, e.g. another numpy version",
    )
    parser.add_argument(
        "--giants", action="store_true", help="only the giant-molecule comparison"
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        tmp = Path(tmp)
        if args.giants:
            bench_giants(tmp)
            return 0
        results = [
            bench_dataset(
                "QM9-like synthetic",
                write_qm9_like(tmp / "qm9", args.n_mol),
                args.old_batches,
                args.repeat,
                not args.no_jax,
            )
        ]
        demo = demo_packed(tmp)
        if demo is not None:
            results.append(
                bench_dataset(
                    "data/demo.npz",
                    demo,
                    args.old_batches,
                    args.repeat,
                    not args.no_jax,
                )
            )
        rss = None
        if not args.skip_rss:
            rss = {}
            for label, n in (("small", args.small), ("big", args.big)):
                path = write_qm9_like(tmp / f"rss_{label}", n, seed=1)
                for who in ("new", "old"):
                    rss[f"{who} {label}"] = measure_rss(path, who)
                if label == "big":
                    rss["big_dataset_bytes"] = sum(
                        f.stat().st_size for f in path.iterdir()
                    )
        report(results, rss)
        if args.json:
            args.json.write_text(json.dumps({"results": results, "rss": rss}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
