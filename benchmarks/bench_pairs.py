"""Benchmark: pair indices of packed batches, side by side with the previous method.

1. **Templates vs direct** (``--sizes``): a packed set holding one molecule of every
   size 2..1000. The previous loader kept the source-atom template of every size
   present (Σ n·(n-1) int32, built at start) and gathered from it per batch; the
   loader now computes pair indices directly from the sizes
   (:func:`physpack.data.pairs.all_pairs`). Each method runs in a fresh subprocess:
   start time (loader construction, plus the templates for the previous method),
   peak RSS, template memory and the time to build one epoch's pair indices.
2. **All pairs vs cutoff pairs** (``--cutoff``): molecules of 50–200 atoms (random
   compact clusters at liquid-like density), PhysNet with the default model
   config: pair slots per batch, host assembly time per batch, and the jitted
   train-step time per batch, with every ordered pair (``loader.pairs="all"``)
   beside pairs within the model cutoff (``"cutoff"``); the same on
   ``data/demo.npz`` (QM9-sized molecules) when present; and the neighbour search
   of one large molecule, distance filter beside k-d tree.

Usage::

    python benchmarks/bench_pairs.py              # both parts
    python benchmarks/bench_pairs.py --part sizes
    python benchmarks/bench_pairs.py --part cutoff --n-mol 400
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from physpack.data.loader import PackedMemmapLoader
from physpack.data.packed import PackedWriter
from physpack.data.pairs import all_pairs, cutoff_pairs, pair_template

ROOT = Path(__file__).resolve().parents[1]


# -- part 1: templates vs direct --------------------------------------------------
def write_sizes(path: Path, sizes: np.ndarray, seed: int = 0) -> Path:
    """A packed directory with one molecule of each of ``sizes`` (random values)."""
    rng = np.random.default_rng(seed)
    t = int(sizes.sum())
    with PackedWriter(path, has_forces=True, has_dipoles=False) as w:
        w.append(
            n_atoms=sizes,
            Z=rng.integers(1, 10, t, dtype=np.int32),
            R=rng.standard_normal((t, 3), dtype=np.float32),
            F=rng.standard_normal((t, 3), dtype=np.float32),
            E=rng.standard_normal(sizes.size),
            Qtot=np.zeros(sizes.size),
        )
    return path


def build_templates(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The previous loader's templates: source atoms of every size present,
    concatenated, with the start of each size."""
    hist = np.bincount(sizes)
    start = np.zeros(hist.size, dtype=np.int64)
    parts, at = [], 0
    for n in np.flatnonzero(hist):
        start[n] = at
        parts.append(pair_template(int(n))[1])
        at += parts[-1].size
    return np.concatenate(parts), start


def template_pairs(
    templates: tuple[np.ndarray, np.ndarray], ns: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The previous loader's per-batch pair gather from the templates."""
    tsrc, tstart = templates
    ns = ns.astype(np.int64)
    k, t = ns.size, int(ns.sum())
    starts = np.cumsum(ns) - ns
    npair = ns * (ns - 1)
    pstart = np.cumsum(npair) - npair
    n_pairs = int(npair.sum())
    pair_src = np.repeat(tstart[ns] - pstart, npair) + np.arange(n_pairs)
    dst = np.repeat(np.arange(t, dtype=np.int32), np.repeat(ns - 1, ns))
    src = np.take(tsrc, pair_src) + np.repeat(starts, npair).astype(np.int32)
    assert k == 0 or dst.size == n_pairs
    return dst, src


def sizes_child(path: str, method: str) -> None:
    """Runs in a subprocess: start, one epoch, peak RSS; prints JSON."""
    t0 = time.perf_counter()
    loader = PackedMemmapLoader(path, 8, prefetch=0, shuffle=False)
    templates = build_templates(loader.sizes) if method == "templates" else None
    start_s = time.perf_counter() - t0
    template_bytes = 0 if templates is None else templates[0].nbytes
    t0 = time.perf_counter()
    n_pairs = 0
    plan = loader._plan(0)
    for b in range(len(plan)):
        ns = loader.sizes[plan.positions(b)]
        if templates is None:
            dst, _ = all_pairs(ns)
        else:
            dst, _ = template_pairs(templates, ns)
        n_pairs += dst.size
    epoch_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "method": method,
                "start_s": start_s,
                "epoch_s": epoch_s,
                "template_bytes": template_bytes,
                "peak_rss_bytes": peak,
                "pairs": n_pairs,
            }
        )
    )


def part_sizes(tmp: Path, largest: int) -> None:
    sizes = np.arange(2, largest + 1, dtype=np.int32)
    path = write_sizes(tmp / "sizes", sizes)
    rows = []
    for method in ("templates", "direct"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(path), method],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    assert rows[0]["pairs"] == rows[1]["pairs"]
    print(f"\n## Pair indices, one molecule of each size 2..{largest}")
    print(f"{sizes.size} molecules, {int(sizes.sum())} atoms, {rows[0]['pairs']} pairs")
    print("| measure | previous (templates) | direct | ratio |")
    print("|---|---|---|---|")
    for key, label, scale, unit in (
        ("template_bytes", "template memory", 1e-9, "GB"),
        ("peak_rss_bytes", "peak RSS", 1e-9, "GB"),
        ("start_s", "start (construction)", 1.0, "s"),
        ("epoch_s", "pair indices of one epoch", 1.0, "s"),
    ):
        old, new = rows[0][key] * scale, rows[1][key] * scale
        ratio = f"{old / new:.1f}×" if new else "–"
        print(f"| {label} | {old:.3f} {unit} | {new:.3f} {unit} | {ratio} |")


# -- part 2: all pairs vs cutoff pairs -------------------------------------------------
def write_clusters(path: Path, n_mol: int, low: int, high: int, seed: int = 0) -> Path:
    """Molecules of ``low..high`` atoms, uniform in a sphere at 0.1 atoms/Å³ (about
    the atom density of organic matter), H/C/N/O, random forces and energies."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(low, high + 1, n_mol).astype(np.int32)
    parts = []
    for n in sizes:
        parts.append(cluster(int(n), rng))
    t = int(sizes.sum())
    with PackedWriter(path, has_forces=True, has_dipoles=False) as w:
        w.append(
            n_atoms=sizes,
            Z=rng.choice(np.array([1, 6, 7, 8], np.int32), t),
            R=np.concatenate(parts).astype(np.float32),
            F=rng.normal(size=(t, 3)).astype(np.float32),
            E=rng.normal(size=n_mol),
            Qtot=np.zeros(n_mol),
        )
    return path


def model_step(cfg):
    """A jitted training step of PhysNet (energy and force MSE, gradient with
    respect to the parameters) on one packed batch."""
    import jax
    import jax.numpy as jnp
    from physpack.model.physnet import energy_and_forces, model_from_config

    model = model_from_config(cfg)

    @jax.jit
    def step(params, x):
        def loss(p):
            out = energy_and_forces(p, model, x, jnp.float32(1.0))
            de = (out["energy_residual"] - x["E"]) * x["molecule_mask"]
            df = (out["forces"] - x["F"]) * x["atom_mask"][:, None]
            return jnp.sum(de**2) + jnp.sum(df**2)

        return jax.value_and_grad(loss)(params)

    return model, step


def part_cutoff(tmp: Path, n_mol: int, batch: int, n_steps: int) -> None:
    neighbour_search()
    write_clusters(tmp / "clusters", n_mol, 50, 200)
    compare_pairs(
        tmp / "clusters", f"{n_mol} molecules of 50–200 atoms", batch, n_steps
    )
    demo = ROOT / "data" / "demo.npz"
    if demo.exists():
        from physpack.data.convert import convert_npz

        convert_npz(demo, tmp / "demo")
        compare_pairs(tmp / "demo", "data/demo.npz (QM9-sized)", 16, n_steps)


def cluster(n: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (n, 3): uniform in a sphere at 0.1 atoms/Å³."""
    radius = (3 * n / (4 * np.pi * 0.1)) ** (1 / 3)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return (d * radius * rng.uniform(size=(n, 1)) ** (1 / 3)).astype(np.float32)


def neighbour_search(cutoff: float = 5.0) -> None:
    """Cutoff pairs of one large molecule: distance filter over all pairs beside
    the k-d tree that :func:`physpack.data.pairs.cutoff_pairs` uses above
    ``TREE_ATOMS`` atoms."""
    rng = np.random.default_rng(0)
    cutoff_pairs(cluster(300, rng), np.array([300]), cutoff, tree_above=0)  # import
    print(f"\n## Cutoff pairs ({cutoff:g} Å) of one molecule: filter vs k-d tree")
    print("| atoms | pairs found | all-pairs filter (ms) | k-d tree (ms) | ratio |")
    print("|---|---|---|---|---|")
    for n in (100, 256, 500, 1000, 3000):
        r, ns = cluster(n, rng), np.array([n])
        times = []
        for tree_above in (1 << 30, 0):
            t0 = time.perf_counter()
            dst, _ = cutoff_pairs(r, ns, cutoff, tree_above=tree_above)
            times.append(1e3 * (time.perf_counter() - t0))
        print(
            f"| {n} | {dst.size} | {times[0]:.1f} | {times[1]:.1f} | "
            f"{times[0] / times[1]:.1f}× |"
        )


def compare_pairs(path: Path, what: str, batch: int, n_steps: int) -> None:
    import jax
    import jax.numpy as jnp
    from physpack.config import ModelConfig
    from physpack.model.physnet import init_params

    cfg = ModelConfig()  # the defaults: features 64, 3 iterations, cutoff 5 Å
    model, step = model_step(cfg)
    rows = {}
    for mode in ("all", "cutoff"):
        t0 = time.perf_counter()
        loader = PackedMemmapLoader(
            path, batch, seed=0, prefetch=0, pairs=mode, cutoff=cfg.cutoff
        )
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        batches = list(itertools.islice(loader.packed_batches(), n_steps + 1))
        host = (time.perf_counter() - t0) / len(batches)

        def inputs(b):
            x = {k: jnp.asarray(v) for k, v in b.items()}
            x["R"], x["F"] = x["R"].astype(jnp.float32), x["F"].astype(jnp.float32)
            x["E"] = x["E"].astype(jnp.float32)
            x["Qtot"] = x["Qtot"].astype(jnp.float32)
            return x

        params = init_params(model, jax.random.PRNGKey(0), batches[0])
        params = jax.tree.map(lambda p: p + 0.01, params)  # non-zero output heads
        xs = [inputs(b) for b in batches]
        jax.block_until_ready(step(params, xs[0]))  # compile
        t0 = time.perf_counter()
        for x in xs[1:]:
            jax.block_until_ready(step(params, x))
        device = (time.perf_counter() - t0) / (len(xs) - 1)
        real = sum(int(b["pair_mask"].sum()) for b in batches)
        rows[mode] = {
            "P": loader.budget.max_pairs,
            "A": loader.budget.max_atoms,
            "pairs_per_batch": real / len(batches),
            "start": start,
            "host_ms": host * 1e3,
            "step_ms": device * 1e3,
            "mol_per_s": sum(int(b["molecule_mask"].sum()) for b in batches[1:])
            / (device * (len(xs) - 1)),
        }
    a, c = rows["all"], rows["cutoff"]
    print(
        f"\n## All pairs vs cutoff pairs ({cfg.cutoff:g} Å), {what}, batch_size "
        f"{batch}, PhysNet defaults, JAX {jax.default_backend()}"
    )
    print("| measure | all pairs | cutoff pairs | gain of cutoff pairs |")
    print("|---|---|---|---|")
    for key, label, fmt in (
        ("A", "atom slots per batch", "{:.0f}"),
        ("P", "pair slots per batch", "{:.0f}"),
        ("pairs_per_batch", "real pairs per batch", "{:.0f}"),
        ("start", "loader start (s; cutoff: counting pass)", "{:.2f}"),
        ("host_ms", "host assembly per batch (ms)", "{:.2f}"),
        ("step_ms", "train step per batch (ms)", "{:.1f}"),
        ("mol_per_s", "train throughput (molecules/s)", "{:.1f}"),
    ):
        ratio = c[key] / a[key] if key == "mol_per_s" else a[key] / c[key]
        print(
            f"| {label} | {fmt.format(a[key])} | {fmt.format(c[key])} | {ratio:.2f} |"
        )


# -- entry --------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("sizes", "cutoff", "all"), default="all")
    ap.add_argument("--largest", type=int, default=1000)
    ap.add_argument("--n-mol", type=int, default=400)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--child", nargs=2, metavar=("PATH", "METHOD"))
    args = ap.parse_args()
    if args.child:
        sizes_child(*args.child)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("sizes", "all"):
            part_sizes(Path(tmp), args.largest)
        if args.part in ("cutoff", "all"):
            part_cutoff(Path(tmp), args.n_mol, args.batch, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
