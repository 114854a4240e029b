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
              them (:func:`physpack.data.padding.epoch_padding_stats`): with the
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
from physpack.data.packed import ARRAYS, MAX_Z, sample_stride
from physpack.data.padding import (
    bucketed_padding,
    dense_padding,
    packed_padding,
    padding_warning,
    percent,
)
from physpack.errors import InputError, cli_entry

HIST_BINS = 50
MB = 1e6
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


#: the budget overrides of the loader
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
    n_total = ds.n_atoms_total
    z_counts, forces = _atom_pass(ds, atoms_per_chunk)
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
    if forces is not None:
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


def _atom_pass(
    ds: Any, atoms_per_chunk: int
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """One pass over the atom rows of ``ds`` in chunks: element counts (int64
    (MAX_Z + 1,), by atomic number) and the force magnitudes' distribution [eV/Å]
    (``None`` without forces): percentiles and histogram from a strided sample
    (``sampled``), mean, RMS and maximum exact over every finite row."""
    z_counts = np.zeros(MAX_Z + 1, dtype=np.int64)
    stride = sample_stride(ds.n_atoms_total)
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
    if ds.F is None:
        return z_counts, None
    forces = _distribution(np.concatenate(f_sample), "eV/Angstrom")
    forces["sampled"] = stride > 1
    forces["exact"] = {
        "mean": f_sum / f_n if f_n else 0.0,
        "rms": math.sqrt(f_sq / f_n) if f_n else 0.0,
        "max": f_max,
    }
    return z_counts, forces


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
        f"| space saved by packing | {percent(b['saved_fraction'])} |",
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
            f"| {name} | {s['n_batches']} | {percent(s['atom_efficiency'])} | "
            f"{percent(s['pair_efficiency'])} | {s['source']} |"
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
        f"{percent(pad['dense']['atom_efficiency'])}, bucketed "
        f"{percent(pad['bucketed']['atom_efficiency'])}, packed "
        f"{percent(pad['packed']['atom_efficiency'])} ({pad['packed']['source']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
