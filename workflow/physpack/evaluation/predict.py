"""``physpack predict``: energies and forces of new structures from one model or a
committee.

The input is a padded NPZ (converted on the fly, in its declared units), a packed
directory or dataset descriptor, or any file ASE reads (extxyz, xyz, traj, ...;
periodic cells are refused: the model is molecular). Molecules go through the
packed loader's fixed-shape batches, so each model compiles once, and every
model sees the same batches. The output NPZ holds, molecules in input order:

=================  ============  =====================================================
key                shape         content
=================  ============  =====================================================
``mol_index``      (M,) int64    index of the molecule in the input
``n_atoms``        (M,) int32    atoms per molecule
``offsets``        (M + 1,)      start of each molecule in the per-atom arrays
``Z``              (A,) int32    atomic numbers
``energy``         (M,) f64      total energy [eV] (committee: mean)
``forces``         (A, 3) f64    forces [eV/Å] (committee: mean)
``dipole``         (M, 3) f64    dipole [e·Å], models with charges
``charges``        (A,) f64      atomic charges [e], models with charges
``*_std``          as above      committee spread (std over members, ddof 0)
``energy_members`` (K, M) f64    each member's energies [eV] (committees)
``E_ref``/``F_ref``              the input's reference values, when it has them
``energy_dispersion`` (M,) f64   D3 energy included in ``energy`` [eV] (models with
                                 dispersion)
``forces_dispersion`` (A, 3) f64 D3 forces included in ``forces`` [eV/Å] (idem)
``dispersion``     str (JSON)    the D3 record and a note saying what includes it, or
                                 ``null``
``units``          str (JSON)    unit of every quantity
``checkpoints``    (K,) str      the models, in order
=================  ============  =====================================================

A model trained on data with D3 subtracted (its checkpoint's ``dispersion``) gets
D3 of each input geometry added to its energy and forces
(:class:`physpack.dispersion.D3`); the members of a committee share their
settings. The reference values are totals: an input whose energies and forces had
D3 subtracted at conversion (a packed directory with ``E_dispersion``) has it added
back to ``E_ref`` (its stored ``E_dispersion``) and ``F_ref`` (D3 forces of its
settings).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physpack import config as cfg
from physpack.atomic import atomic_write_bytes
from physpack.data.assembly import molecule_atom_rows
from physpack.data.convert import convert_npz
from physpack.data.descriptor import open_dataset
from physpack.data.loader import from_config
from physpack.data.packed import PackedDataset, PackedWriter
from physpack.data.progress import Progress
from physpack.dispersion import (
    D3,
    DispersionSettings,
    committee_d3,
    settings_of,
)
from physpack.errors import InputError, cli_entry
from physpack.evaluation.inference import predict_split
from physpack.evaluation.predictions import SplitPredictions
from physpack.metrics import committee
from physpack.model.checkpoint import load as load_checkpoint
from physpack.units import CANONICAL_UNITS


@contextlib.contextmanager
def open_structures(
    path: str | os.PathLike, data: cfg.DataConfig | None = None
) -> Iterator[PackedDataset]:
    """The structures of ``path`` as a packed dataset (temporary for NPZ and ASE
    input, removed on exit). ``data`` gives the input's units (NPZ, and packed
    directories without a manifest)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir() or path.suffix == ".json":
        declared = {}
        if data is not None:
            declared = {
                "energy": data.energy_unit,
                "length": data.length_unit,
                "dipole": data.dipole_unit,
            }
        units = {k: v for k, v in declared.items() if v is not None}
        yield open_dataset(path, units=units or None)
        return
    with tempfile.TemporaryDirectory(prefix="physpack-predict-") as tmp:
        packed = Path(tmp) / "packed"
        if path.suffix == ".npz":
            convert_npz(path, packed, data)
        else:
            _ase_to_packed(path, packed)
        yield PackedDataset(packed)


def _ase_to_packed(path: Path, out: Path) -> None:
    """Write every structure of an ASE-readable file as a packed directory (Å, eV;
    energies NaN and no forces unless every structure has them)."""
    from ase.io import read

    try:
        frames = read(path, index=":")
    except Exception as exc:  # ASE raises many types for unreadable files
        raise InputError(f"{path}: ASE cannot read it ({exc})") from exc
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise InputError(f"{path}: no structures")
    energies, forces = [], []
    for i, atoms in enumerate(frames):
        if atoms.pbc.any():
            raise InputError(
                f"{path}: structure {i} is periodic (pbc={atoms.pbc.tolist()}); "
                f"the model is molecular"
            )
        results = atoms.calc.results if atoms.calc is not None else {}
        energies.append(float(results["energy"]) if "energy" in results else np.nan)
        forces.append(results.get("forces"))
    has_forces = all(f is not None for f in forces)
    n = np.array([len(a) for a in frames], np.int32)
    charges = [
        float(a.info["charge"])
        if "charge" in a.info
        else float(np.sum(a.get_initial_charges()))
        for a in frames
    ]
    arrays: dict[str, Any] = {
        "Z": np.concatenate([a.numbers for a in frames]),
        "R": np.concatenate([a.positions for a in frames]),
        "E": np.array(energies),
        "Qtot": np.array(charges),
    }
    if has_forces:
        arrays["F"] = np.concatenate([np.asarray(f) for f in forces])
    with PackedWriter(out, has_forces=has_forces, has_dipoles=False) as writer:
        writer.source = {"file": str(path), "reader": "ase.io.read"}
        writer.append(n, **arrays)


def combine_members(
    members: Sequence[SplitPredictions],
    checkpoints: Sequence[str],
    dispersion: Dispersion | None = None,
) -> dict[str, np.ndarray]:
    """The output arrays (module docstring) of one or several models' predictions
    of the same molecules (``dispersion``: the D3 part they include)."""
    first = members[0]
    out: dict[str, np.ndarray] = {
        "mol_index": first.mol_index,
        "n_atoms": first.n_atoms,
        "offsets": first.offsets,
        "Z": first.Z,
    }
    combined = committee([m.predicted() for m in members])
    for name, c in combined.items():
        out[name] = c.mean
        if len(members) > 1:
            out[f"{name}_std"] = c.std
    if len(members) > 1:
        out["energy_members"] = combined["energy"].members
    if np.isfinite(first.E_true).all():
        out["E_ref"] = first.E_true
    if first.F_true is not None:
        out["F_ref"] = first.F_true
    units = {
        "energy": CANONICAL_UNITS["energy"],
        "forces": CANONICAL_UNITS["forces"],
        "dipole": CANONICAL_UNITS["dipole"],
        "charges": CANONICAL_UNITS["charge"],
    }
    note = None
    if dispersion is not None:
        out["energy_dispersion"] = dispersion.energies
        out["forces_dispersion"] = dispersion.forces
        units["energy_dispersion"] = CANONICAL_UNITS["energy"]
        units["forces_dispersion"] = CANONICAL_UNITS["forces"]
        note = {**dispersion.record, "note": dispersion.note}
    out["dispersion"] = np.array(json.dumps(note))
    out["units"] = np.array(json.dumps(units))
    out["checkpoints"] = np.array([str(c) for c in checkpoints])
    return out


@dataclasses.dataclass(frozen=True)
class Dispersion:
    """The D3 part of a prediction, molecules in prediction order.

    Attributes:
        record: the checkpoints' D3 record (settings, label, dftd3 version).
        energies: float64 (M,) [eV]; forces: float64 (A, 3) [eV/Å].
    """

    record: dict[str, Any]
    energies: np.ndarray
    forces: np.ndarray

    @property
    def note(self) -> str:
        return (
            f"energy and forces include {self.record['label']} dispersion (dftd3 "
            f"{self.record['dftd3_version']}), computed for each geometry and added "
            "to the network's; E_ref and F_ref are totals"
        )


class _D3Terms:
    """D3 of the predicted molecules, computed once per settings.

    Args:
        dataset: the input structures; pred: predictions of them (their order).
    """

    def __init__(self, dataset: PackedDataset, pred: SplitPredictions, where: str):
        self._where = where
        self._n_atoms = pred.n_atoms
        self._z = pred.Z
        rows = molecule_atom_rows(dataset.offsets[pred.mol_index], pred.n_atoms)
        self._positions = np.asarray(dataset.R[rows], np.float64) * dataset.scale("R")
        self._done: dict[DispersionSettings, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, d3: D3) -> tuple[np.ndarray, np.ndarray]:
        """Energies (M,) [eV] and forces (A, 3) [eV/Å] of ``d3``."""
        if d3.settings not in self._done:
            self._done[d3.settings] = d3.molecules(
                self._z, self._positions, self._n_atoms, self._where
            )
        return self._done[d3.settings]


def _with_d3(
    members: list[SplitPredictions],
    dataset: PackedDataset,
    d3: D3 | None,
    where: str,
) -> tuple[list[SplitPredictions], Dispersion | None]:
    """Predictions and references as totals: the checkpoints' D3 (``d3``) added to
    every member's predictions, the dataset's subtracted D3 to the references."""
    first = members[0]
    stored = settings_of(dataset.dispersion)
    if d3 is None and stored is None:
        return members, None
    terms = _D3Terms(dataset, first, where)
    if stored is not None:  # the input's E and F had D3 subtracted: restore them
        energies = np.asarray(dataset.array("E_dispersion")[first.mol_index])
        energies = energies * dataset.scale("E_dispersion")
        same = d3 is not None and d3.settings == stored
        subtracted = d3 if same else D3(stored, f"{where} (D3 subtracted from E, F)")
        _, forces = terms(subtracted)
        members = [
            dataclasses.replace(
                m,
                E_true=m.E_true + energies,
                F_true=None if m.F_true is None else m.F_true + forces,
            )
            for m in members
        ]
    if d3 is None:
        return members, None
    energies, forces = terms(d3)
    members = [
        dataclasses.replace(m, E_pred=m.E_pred + energies, F_pred=m.F_pred + forces)
        for m in members
    ]
    return members, Dispersion(d3.record(), energies, forces)


def _pair_model(models: Sequence[Any]) -> cfg.ModelConfig:
    """The model config that decides the batches' pairs for every model: the
    largest cutoff, and all pairs if any model has charges."""
    configs = [m.model_config for m in models]
    widest = max(configs, key=lambda c: c.cutoff)
    return dataclasses.replace(widest, charges=any(c.charges for c in configs))


def predict(
    checkpoints: Sequence[str | os.PathLike],
    structures: str | os.PathLike,
    output: str | os.PathLike,
    *,
    loader: cfg.LoaderConfig | None = None,
    data: cfg.DataConfig | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Predict ``structures`` with every model of ``checkpoints`` and write
    ``output`` (NPZ, atomically). Returns the written arrays."""
    if not checkpoints:
        raise InputError("predict: no checkpoint given")
    models = [load_checkpoint(c) for c in checkpoints]
    d3 = committee_d3(
        [(str(c), m.dispersion) for c, m in zip(checkpoints, models, strict=True)]
    )
    loader = loader or cfg.LoaderConfig()
    with open_structures(structures, data) as dataset:
        lo = from_config(dataset, loader, shuffle=False, model=_pair_model(models))
        members = []
        for path, ckpt in zip(checkpoints, models, strict=True):
            bar = Progress(lo.n_molecules, f"predict {Path(path).name}")
            members.append(
                predict_split(
                    ckpt,
                    lo,
                    with_dipoles=False,
                    where=str(structures),
                    progress=(lambda done, b=bar: b.update(done - b.done))
                    if progress
                    else None,
                )
            )
            if progress:
                bar.close()
        members, dispersion = _with_d3(members, dataset, d3, str(structures))
    arrays = combine_members(members, [str(c) for c in checkpoints], dispersion)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(output, buf.getvalue())
    return arrays


@cli_entry("physpack predict")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack predict",
        description="Energies and forces (dipoles, charges) of new structures from "
        "one checkpoint or a committee (mean and std).",
    )
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    parser.add_argument(
        "input", help="padded NPZ, packed directory, or any file ASE reads"
    )
    parser.add_argument("--output", required=True, help="predictions NPZ to write")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress lines on stderr"
    )
    cfg.add_section_arguments(parser, cfg.DataConfig, "data", option="--data-config")
    cfg.add_section_arguments(
        parser, cfg.LoaderConfig, "loader", option="--loader-config"
    )
    args = parser.parse_args(argv)
    data = cfg.section_from_args(cfg.DataConfig, args, "data")
    loader = cfg.section_from_args(cfg.LoaderConfig, args, "loader")
    arrays = predict(
        args.checkpoints,
        args.input,
        args.output,
        loader=loader,
        data=data,
        progress=not args.no_progress,
    )
    print(
        f"predicted {arrays['mol_index'].size} molecules with "
        f"{len(args.checkpoints)} model(s) -> {args.output}"
    )
    return 0
