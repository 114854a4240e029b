"""``physpack stats``: packing statistics of a packed directory (JSON, Markdown, PNG).

Reported: molecule and atom counts, the molecule-size histogram, element counts,
the per-atom energy (E/N, eV/atom) and force (|F|, eV/Å) distributions, bytes of
the packed directory against the padded NPZ layout, and the padding efficiency of
three batching strategies at the configured ``batch_size``:

``dense``     ``batch_size`` molecules per batch, each padded to ``num_atoms`` (or
              the largest molecule), the last batch padded to ``batch_size``.
``bucketed``  molecules shuffled (seed 0), sorted by size inside buckets of
              ``bucket_size``, cut into batches of ``batch_size``; each batch padded
              to its largest molecule (batch dimension padded to ``batch_size``).
``packed``    the loader's fixed-budget packed batches, epoch 0, as training makes
              them (:func:`epoch_padding_stats`): with the
              giant budget of ``loader.giant_atoms``, and the pairs within the
              model's cutoff where ``loader.pairs`` gives those (``details.pairs``;
              real pairs are then those within the cutoff).

Efficiency = real atoms / atom slots and real pairs / pair slots, where pairs are
the ordered pairs i ≠ j inside one molecule, n·(n-1) per molecule of n atoms, and a
slot padded to width W holds W·(W-1) pair slots. Data are read in chunks, so memory
stays bounded; force percentiles come from a stride sample when there are more
than ``physpack.data.packed.ATOM_SAMPLE`` atoms (exact below).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols
from matplotlib.figure import Figure

from physpack import config as cfg
from physpack.atomic import StagedOutputs
from physpack.data.descriptor import open_dataset
from physpack.data.loader import PackedMemmapLoader, pair_options
from physpack.data.packed import ARRAYS, MAX_Z, PackedDataset, sample_stride
from physpack.data.planning import GIANT, NORMAL, Plan
from physpack.errors import ConfigError, InputError, cli_entry

HIST_BINS = 50
MB = 1e6
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
#: the budget overrides of the loader
BUDGET_KEYS = ("max_atoms", "max_pairs", "max_molecules")


@dataclasses.dataclass(frozen=True)
class StrategyPadding:
    """Padding of one batching strategy over one epoch.

    Attributes:
        n_batches: batches per epoch.
        atom_slots, pair_slots: slots over the epoch (real + padding).
        atom_efficiency, pair_efficiency: real atoms / atom slots, real pairs /
            pair slots (ordered pairs i ≠ j inside a molecule).
        source: ``"exact"`` (computed here) or ``"loader"``.
        details: strategy parameters (widths, budgets).
    """

    n_batches: int
    atom_slots: int
    pair_slots: int
    atom_efficiency: float
    pair_efficiency: float
    source: str
    details: dict[str, Any]


def _efficiency(real: int, slots: int) -> float:
    return real / slots if slots else 1.0


def dense_padding(sizes: np.ndarray, batch_size: int, width: int) -> StrategyPadding:
    """Every molecule padded to ``width`` atoms, ``batch_size`` molecules per batch.

    Args:
        sizes: int (n_mol,) atoms per molecule.
    """
    sizes = sizes.astype(np.int64)
    if sizes.max() > width:
        raise ConfigError(
            f"loader.num_atoms = {width} is smaller than the largest molecule "
            f"({int(sizes.max())} atoms)"
        )
    n_batches = -(-sizes.size // batch_size)
    slots = n_batches * batch_size
    atom_slots, pair_slots = slots * width, slots * width * (width - 1)
    return StrategyPadding(
        n_batches=n_batches,
        atom_slots=atom_slots,
        pair_slots=pair_slots,
        atom_efficiency=_efficiency(int(sizes.sum()), atom_slots),
        pair_efficiency=_efficiency(int((sizes * (sizes - 1)).sum()), pair_slots),
        source="exact",
        details={"num_atoms": width, "batch_size": batch_size},
    )


def bucketed_padding(
    sizes: np.ndarray, batch_size: int, bucket_size: int, seed: int = 0
) -> StrategyPadding:
    """Shuffled, size-sorted inside buckets of ``bucket_size``, batches of
    ``batch_size`` padded to their largest molecule (and to ``batch_size`` rows).

    Args:
        sizes: int (n_mol,) atoms per molecule.
    """
    sizes = sizes.astype(np.int64)
    order = np.random.default_rng(seed).permutation(sizes.size)
    widths = []
    for a in range(0, sizes.size, bucket_size):
        bucket = np.sort(sizes[order[a : a + bucket_size]])
        starts = np.arange(0, bucket.size, batch_size)
        widths.append(np.maximum.reduceat(bucket, starts))
    w = np.concatenate(widths)
    atom_slots = int(batch_size * w.sum())
    pair_slots = int(batch_size * (w * (w - 1)).sum())
    return StrategyPadding(
        n_batches=int(w.size),
        atom_slots=atom_slots,
        pair_slots=pair_slots,
        atom_efficiency=_efficiency(int(sizes.sum()), atom_slots),
        pair_efficiency=_efficiency(int((sizes * (sizes - 1)).sum()), pair_slots),
        source="exact",
        details={
            "batch_size": batch_size,
            "bucket_size": bucket_size,
            "seed": seed,
            "mean_width": float(w.mean()),
        },
    )


def packed_padding(
    ds: PackedDataset, loader: cfg.LoaderConfig, model: cfg.ModelConfig | None = None
) -> StrategyPadding:
    """The loader's fixed-budget packed batches (epoch 0, seed 0) as training
    makes them: the pairs ``loader.pairs`` gives for ``model`` (within its cutoff,
    or all), and the giant budget of ``loader.giant_atoms``."""
    pairs = pair_options(loader.pairs, model)
    got = epoch_padding_stats(
        ds,
        batch_size=loader.batch_size,
        bucket_size=loader.bucket_size,
        seed=0,
        num_atoms=loader.num_atoms,
        max_atoms=loader.max_atoms,
        max_pairs=loader.max_pairs,
        max_molecules=loader.max_molecules,
        giant_atoms=loader.giant_atoms,
        max_molecule_atoms=loader.max_molecule_atoms,
        **pairs,
    )
    n_batches = int(got["n_batches"])
    return StrategyPadding(
        n_batches=n_batches,
        atom_slots=n_batches * int(got["max_atoms"]),
        pair_slots=n_batches * int(got["max_pairs"]),
        atom_efficiency=float(got["atom_efficiency"]),
        pair_efficiency=float(got["pair_efficiency"]),
        source="loader",
        details={
            k: got[k]
            for k in (
                "max_atoms",
                "max_pairs",
                "max_molecules",
                "mean_molecules_per_batch",
                "giant_n_batches",
                "giant_n_molecules",
                "giant_max_atoms",
            )
            if k in got
        }
        | {"pairs": pairs["pairs"]},
    )


def _padding_by_kind(
    loader: PackedMemmapLoader, plan: Plan, sizes: np.ndarray
) -> tuple[dict[str, float | int], dict[str, int], dict[str, int]]:
    """Per budget (``normal_…``, ``giant_…``) figures of :func:`epoch_padding_stats`
    for ``plan``, and the real and slot totals of atoms, pairs and molecules over
    both budgets."""
    pair_counts = loader.pair_counts
    cum = {
        "atoms": np.concatenate([[0], np.cumsum(sizes[plan.order])]),
        "pairs": np.concatenate([[0], np.cumsum(pair_counts[plan.order])]),
        "molecules": np.arange(plan.order.size + 1),
    }
    per_batch = {k: c[plan.bounds[1:]] - c[plan.bounds[:-1]] for k, c in cum.items()}
    out: dict[str, float | int] = {}
    totals = {"atoms": 0, "pairs": 0, "molecules": 0}
    slots = {"atoms": 0, "pairs": 0, "molecules": 0}
    for kind, name in ((NORMAL, "normal"), (GIANT, "giant")):
        mine = plan.kinds == kind
        n_b = int(mine.sum())
        real = {k: int(v[mine].sum()) for k, v in per_batch.items()}
        if kind < len(loader.budgets):
            b = loader.budgets[kind]
            cap = {
                "atoms": b.max_atoms,
                "pairs": b.max_pairs,
                "molecules": b.max_molecules,
            }
        else:
            cap = {"atoms": 0, "pairs": 0, "molecules": 0}
        for k in totals:
            totals[k] += real[k]
            slots[k] += n_b * cap[k]
        out[f"{name}_n_batches"] = n_b
        out[f"{name}_n_molecules"] = real["molecules"]
        out[f"{name}_atom_efficiency"] = real["atoms"] / max(n_b * cap["atoms"], 1)
        out[f"{name}_pair_efficiency"] = (
            real["pairs"] / (n_b * cap["pairs"]) if n_b * cap["pairs"] else 1.0
        )
        if kind == GIANT:
            out |= {f"giant_{k}": v for k, v in zip(BUDGET_KEYS, cap.values())}
    return out, totals, slots


def epoch_padding_stats(
    dataset: str | os.PathLike | PackedDataset,
    indices: np.ndarray | None = None,
    batch_size: int = cfg.LoaderConfig.batch_size,
    bucket_size: int = cfg.LoaderConfig.bucket_size,
    seed: int = 0,
    *,
    shuffle: bool = True,
    mix_sizes: bool = True,
    num_atoms: int | None = None,
    **options: Any,
) -> dict[str, float | int]:
    """Padding of one epoch (epoch 0) of packed batches, from the plan alone (no
    atom data read), next to the dense form's.

    Args:
        dataset: packed directory or an open dataset.
        indices, batch_size, bucket_size, seed, shuffle, mix_sizes: as for
            :class:`PackedMemmapLoader`.
        num_atoms: padded width of the dense comparison (default: largest molecule).
        **options: budget overrides ``max_atoms``, ``max_pairs``, ``max_molecules``
            and the loader options ``pairs``, ``cutoff``, ``giant_atoms``,
            ``max_molecule_atoms``, ``process_slots``.

    Returns:
        ``atom_efficiency``, ``pair_efficiency``, ``molecule_efficiency`` (real
        atoms / atom slots, etc., over the epoch's batches of every budget),
        ``n_batches``, ``max_atoms``, ``max_pairs``, ``max_molecules`` (normal
        budget), ``n_molecules``, ``real_atoms``, ``real_pairs``,
        ``mean_molecules_per_batch``; per budget ``normal_…`` and ``giant_…``
        (``n_batches``, ``n_molecules``, ``atom_efficiency``, ``pair_efficiency``,
        and for giants ``max_atoms``, ``max_pairs``, ``max_molecules``; zeros when
        there are no giants); and the dense form's ``dense_num_atoms``,
        ``dense_n_batches``, ``dense_atom_efficiency``, ``dense_pair_efficiency``
        (``batch_size`` molecules padded to ``dense_num_atoms``, pairs W·(W-1)
        per molecule slot).
    """
    known = set(BUDGET_KEYS) | {
        "pairs",
        "cutoff",
        "giant_atoms",
        "max_molecule_atoms",
        "process_slots",
    }
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"epoch_padding_stats: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    loader = PackedMemmapLoader(
        dataset,
        batch_size,
        shuffle=shuffle,
        bucket_size=bucket_size,
        seed=seed,
        indices=indices,
        prefetch=0,
        mix_sizes=mix_sizes,
        **options,
    )
    plan = loader._plan(0)
    sizes = loader.sizes.astype(np.int64)
    out, totals, slots = _padding_by_kind(loader, plan, sizes)
    b = loader.budget
    n_batches = len(plan)
    atoms, mols = totals["atoms"], totals["molecules"]
    width = int(sizes.max()) if num_atoms is None else int(num_atoms)
    dense_batches = -(-mols // batch_size)
    dense_slots = dense_batches * batch_size
    all_pairs_total = int((sizes * (sizes - 1)).sum())
    return out | {
        "n_molecules": mols,
        "n_batches": n_batches,
        "max_atoms": b.max_atoms,
        "max_pairs": b.max_pairs,
        "max_molecules": b.max_molecules,
        "real_atoms": atoms,
        "real_pairs": totals["pairs"],
        "mean_molecules_per_batch": mols / n_batches,
        "atom_efficiency": atoms / slots["atoms"],
        "pair_efficiency": totals["pairs"] / slots["pairs"] if slots["pairs"] else 1.0,
        "molecule_efficiency": mols / slots["molecules"],
        "dense_num_atoms": width,
        "dense_n_batches": dense_batches,
        "dense_atom_efficiency": atoms / (dense_slots * width),
        "dense_pair_efficiency": (
            all_pairs_total / (dense_slots * width * (width - 1)) if width > 1 else 1.0
        ),
    }


def _distribution(values: np.ndarray, unit: str) -> dict[str, Any]:
    """Summary and histogram of finite ``values`` (float64 1-D)."""
    finite = values[np.isfinite(values)]
    out: dict[str, Any] = {"unit": unit, "count": int(finite.size)}
    out["non_finite"] = int(values.size - finite.size)
    if finite.size == 0:
        return out
    counts, edges = np.histogram(finite, bins=HIST_BINS)
    out |= {
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "percentiles": {
            str(p): float(v)
            for p, v in zip(PERCENTILES, np.percentile(finite, PERCENTILES))
        },
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }
    return out


def padded_bytes(n_mol: int, width: int, has_forces: bool, has_dipoles: bool) -> int:
    """Bytes of the padded NPZ layout at the format's dtypes: Z, R (and F) padded to
    ``width`` atoms, E, Q, N per molecule (and D)."""
    per_atom = ARRAYS["Z"].itemsize + ARRAYS["R"].itemsize
    per_atom += ARRAYS["F"].itemsize if has_forces else 0
    per_mol = ARRAYS["E"].itemsize + ARRAYS["Qtot"].itemsize + 4  # + N int32
    per_mol += ARRAYS["D"].itemsize if has_dipoles else 0
    return n_mol * (width * per_atom + per_mol)


def packing_stats(
    path: str | os.PathLike,
    loader: cfg.LoaderConfig | None = None,
    *,
    model: cfg.ModelConfig | None = None,
    atoms_per_chunk: int = 1 << 20,
) -> dict[str, Any]:
    """All statistics of the dataset ``path`` (a packed directory or a descriptor)
    as a JSON-ready dict; the packed batches are those training makes for
    ``model`` (``None``: all pairs).

    Units are in the keys or in ``unit`` fields: energies eV (per atom: eV/atom),
    forces eV/Å, sizes in MB (10⁶ bytes).
    """
    loader = loader or cfg.LoaderConfig()
    ds = open_dataset(path)
    if ds.n_molecules == 0:
        raise InputError(f"{ds.path}: empty dataset, nothing to report")
    sizes = np.asarray(ds.n_atoms, dtype=np.int64)
    width = loader.num_atoms or int(sizes.max())
    z_counts = np.zeros(MAX_Z + 1, dtype=np.int64)
    n_total = ds.n_atoms_total
    stride = sample_stride(n_total)
    f_sample: list[np.ndarray] = []
    f_sum = f_sq = f_max = 0.0
    f_n = 0
    for chunk in ds.atom_chunks(atoms_per_chunk):
        lo, hi = chunk.lo, chunk.hi
        z = np.asarray(ds.Z[lo:hi])
        z_counts += np.bincount(np.clip(z, 0, MAX_Z), minlength=MAX_Z + 1)
        if ds.F is not None:
            f = np.asarray(ds.canonical("F", lo, hi), dtype=np.float64)
            mag = np.sqrt(np.einsum("ij,ij->i", f, f))
            ok = np.isfinite(mag)
            f_n += int(ok.sum())
            f_sum += float(mag[ok].sum())
            f_sq += float((mag[ok] ** 2).sum())
            f_max = max(f_max, float(mag[ok].max(initial=0.0)))
            f_sample.append(mag[chunk.sample(stride)])
    energies = np.asarray(ds.canonical("E"), dtype=np.float64)
    e_per_atom = energies / sizes
    pairs = sizes * (sizes - 1)
    stats: dict[str, Any] = {
        "path": str(ds.path),
        "n_molecules": ds.n_molecules,
        "n_atoms_total": n_total,
        "n_pairs_total": int(pairs.sum()),
        "atoms_per_molecule": {
            "min": int(sizes.min()),
            "max": int(sizes.max()),
            "mean": float(sizes.mean()),
            "median": float(np.median(sizes)),
        },
        "size_histogram": {
            str(n): int(c) for n, c in enumerate(np.bincount(sizes)) if c
        },
        "element_counts": {
            chemical_symbols[int(e)] if e else "X": int(z_counts[e])
            for e in np.flatnonzero(z_counts)
        },
        "arrays": ds.keys,
        "units": {"energy": "eV", "forces": "eV/Angstrom", "bytes": "MB (1e6 bytes)"},
        "energy_per_atom": _distribution(e_per_atom, "eV/atom"),
        "energy": _distribution(energies, "eV"),
    }
    if ds.F is not None:
        sample = np.concatenate(f_sample)
        forces = _distribution(sample, "eV/Angstrom")
        # percentiles and histogram from the (stride) sample; these three exact
        forces["sampled"] = stride > 1
        forces["exact"] = {
            "mean": f_sum / f_n if f_n else 0.0,
            "rms": math.sqrt(f_sq / f_n) if f_n else 0.0,
            "max": f_max,
        }
        stats["force_magnitude"] = forces
    packed = ds.stored_bytes()
    padded = padded_bytes(ds.n_molecules, width, ds.F is not None, ds.D is not None)
    stats["bytes"] = {
        "packed_MB": packed / MB,
        "padded_MB": padded / MB,
        "padded_width": width,
        "saved_fraction": 1.0 - packed / padded,
    }
    strategies = {
        "dense": dense_padding(sizes, loader.batch_size, width),
        "bucketed": bucketed_padding(sizes, loader.batch_size, loader.bucket_size),
        "packed": packed_padding(ds, loader, model),
    }
    stats["batch_size"] = loader.batch_size
    stats["padding"] = {k: dataclasses.asdict(v) for k, v in strategies.items()}
    return stats


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def markdown_report(stats: dict[str, Any]) -> str:
    """The Markdown version of :func:`packing_stats`' result."""
    size = stats["atoms_per_molecule"]
    b = stats["bytes"]
    lines = [
        f"# Packing statistics: `{stats['path']}`",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| molecules | {stats['n_molecules']} |",
        f"| atoms | {stats['n_atoms_total']} |",
        (
            f"| atoms per molecule (min / mean / max) | {size['min']} / "
            f"{size['mean']:.2f} / {size['max']} |"
        ),
        f"| packed size | {b['packed_MB']:.3f} MB |",
        f"| padded size (width {b['padded_width']}) | {b['padded_MB']:.3f} MB |",
        f"| space saved by packing | {_pct(b['saved_fraction'])} |",
        "",
        f"## Padding efficiency (batch size {stats['batch_size']})",
        "",
        (
            "Real atoms / atom slots and real pairs / pair slots (ordered pairs "
            "i ≠ j inside a molecule)."
        ),
        "",
        "| strategy | batches | atom efficiency | pair efficiency | source |",
        "|---|---|---|---|---|",
    ]
    for name, s in stats["padding"].items():
        lines.append(
            f"| {name} | {s['n_batches']} | {_pct(s['atom_efficiency'])} | "
            f"{_pct(s['pair_efficiency'])} | {s['source']} |"
        )
    lines += [
        "",
        "## Distributions",
        "",
        "| quantity | unit | mean | std | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (
        ("energy_per_atom", "energy per atom E/N"),
        ("energy", "total energy E"),
        ("force_magnitude", "force magnitude |F|"),
    ):
        d = stats.get(key)
        if d and d.get("count"):
            lines.append(
                f"| {label} | {d['unit']} | {d['mean']:.4g} | {d['std']:.4g} | "
                f"{d['min']:.4g} | {d['max']:.4g} |"
            )
    lines += ["", "## Elements", "", "| element | atoms |", "|---|---|"]
    lines += [f"| {el} | {n} |" for el, n in stats["element_counts"].items()]
    lines += ["", "## Molecule sizes", "", "| atoms | molecules |", "|---|---|"]
    lines += [f"| {n} | {c} |" for n, c in stats["size_histogram"].items()]
    return "\n".join(lines) + "\n"


def figure(stats: dict[str, Any]) -> Figure:
    """A 2×3 panel figure of :func:`packing_stats`' result (no pyplot state)."""
    fig = Figure(figsize=(13, 7.5), layout="constrained")
    ax = fig.subplots(2, 3)
    sizes = {int(k): v for k, v in stats["size_histogram"].items()}
    ax[0, 0].bar(list(sizes), list(sizes.values()), width=0.9, color="tab:blue")
    ax[0, 0].set(xlabel="atoms per molecule", ylabel="molecules", title="Sizes")
    elements = stats["element_counts"]
    ax[0, 1].bar(list(elements), list(elements.values()), color="tab:green")
    ax[0, 1].set(ylabel="atoms", title="Elements")
    for axis, key, xlabel, title in (
        (ax[0, 2], "energy_per_atom", "E / N [eV/atom]", "Energy per atom"),
        (ax[1, 0], "force_magnitude", "|F| [eV/Å]", "Force magnitude"),
    ):
        hist = stats.get(key, {}).get("histogram")
        if hist:
            axis.stairs(hist["counts"], hist["edges"], fill=True, color="tab:orange")
            axis.set(xlabel=xlabel, ylabel="count")
        else:
            axis.text(0.5, 0.5, "not in dataset", ha="center", transform=axis.transAxes)
        axis.set_title(title)
    names = list(stats["padding"])
    x = np.arange(len(names))
    for k, (kind, color) in enumerate((("atom", "tab:blue"), ("pair", "tab:red"))):
        values = [100 * stats["padding"][n][f"{kind}_efficiency"] for n in names]
        ax[1, 1].bar(x + (k - 0.5) * 0.38, values, 0.38, label=f"{kind}s", color=color)
    ax[1, 1].set_xticks(x, names)
    ax[1, 1].set(
        ylabel="real / slots [%]",
        ylim=(0, 105),
        title=f"Padding efficiency (batch size {stats['batch_size']})",
    )
    ax[1, 1].legend()
    b = stats["bytes"]
    ax[1, 2].bar(
        ["packed", f"padded (width {b['padded_width']})"],
        [b["packed_MB"], b["padded_MB"]],
        color=["tab:green", "tab:gray"],
    )
    ax[1, 2].set(
        ylabel="size [MB]",
        title=f"Disk: {100 * b['saved_fraction']:.0f} % saved by packing",
    )
    fig.suptitle(f"{stats['n_molecules']} molecules, {stats['n_atoms_total']} atoms")
    return fig


def write_outputs(
    stats: dict[str, Any], json_path: Path, md_path: Path, png_path: Path
) -> None:
    """Write the three outputs, each to a temporary sibling; the renames come last,
    so a failure leaves none of them half-written."""
    with StagedOutputs() as staged:
        json_tmp, md_tmp, png_tmp = map(staged.file, (json_path, md_path, png_path))
        json_tmp.write_text(json.dumps(stats, indent=2, allow_nan=False) + "\n")
        md_tmp.write_text(markdown_report(stats))
        figure(stats).savefig(png_tmp, dpi=110, format="png")


#: packed batches that use fewer of their pair slots than this are worth a warning:
#: most of each step's compute goes to padding
LOW_PAIR_EFFICIENCY = 0.5


def padding_warning(stats: dict[str, Any], loader: cfg.LoaderConfig) -> str | None:
    """One line when the loader settings leave the packed batches' pair efficiency
    (real pairs / pair slots) below :data:`LOW_PAIR_EFFICIENCY`, with the number,
    the cause most often behind it and the setting that helps; None otherwise."""
    packed = stats["padding"]["packed"]
    efficiency = packed["pair_efficiency"]
    if efficiency >= LOW_PAIR_EFFICIENCY:
        return None
    if loader.giant_atoms is None:
        hint = (
            "one budget holds the largest molecule "
            f"({stats['atoms_per_molecule']['max']} atoms): "
            "set loader.giant_atoms: auto (or a number of atoms) to give large "
            "molecules batches of their own"
        )
    else:
        hint = "see the padding table of the packing statistics"
    return (
        f"warning: packed batches use {_pct(efficiency)} of their pair slots with "
        f"these loader settings (below {_pct(LOW_PAIR_EFFICIENCY)}: about "
        f"{1 / max(efficiency, 1e-9):.1f}x the compute per step); {hint}"
    )


@cli_entry("physpack stats")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack stats",
        description="Packing statistics of a packed directory: JSON, Markdown, PNG.",
    )
    parser.add_argument(
        "packed", type=Path, help="packed directory or dataset descriptor"
    )
    parser.add_argument("--json", type=Path, required=True, help="JSON output")
    parser.add_argument("--markdown", type=Path, required=True, help="Markdown output")
    parser.add_argument("--figure", type=Path, required=True, help="PNG output")
    cfg.add_section_arguments(parser, cfg.LoaderConfig, "loader")
    cfg.add_section_arguments(parser, cfg.ModelConfig, "model", option="--model-config")
    args = parser.parse_args(argv)
    loader = cfg.section_from_args(cfg.LoaderConfig, args, "loader")
    model = cfg.section_from_args(cfg.ModelConfig, args, "model")
    stats = packing_stats(args.packed, loader, model=model)
    write_outputs(stats, args.json, args.markdown, args.figure)
    warning = padding_warning(stats, loader)
    if warning is not None:
        print(warning, file=sys.stderr)
    pad = stats["padding"]
    print(
        f"{args.packed}: {stats['n_molecules']} molecules; atom efficiency dense "
        f"{_pct(pad['dense']['atom_efficiency'])}, bucketed "
        f"{_pct(pad['bucketed']['atom_efficiency'])}, packed "
        f"{_pct(pad['packed']['atom_efficiency'])} ({pad['packed']['source']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
