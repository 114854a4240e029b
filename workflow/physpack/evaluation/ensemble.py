"""Committees of models: mean prediction, spread, and how well the spread
predicts the error (calibration).

Each member of a committee is evaluated on its own first (``predictions.npz`` of
:mod:`physpack.evaluation.evaluate`, molecules in dataset order); this module
combines those files, so an ensemble evaluation costs no model evaluation at
all. All arrays are numpy, in eV, eV/Å, e·Å and e.

The spread is the standard deviation over members (ddof 0, as the committee's
own spread, not an estimate of a population's; :func:`physpack.metrics.committee`,
as ``physpack predict`` uses it). Calibration treats the error of
the mean as Gaussian with standard deviation ``s·σ``: the maximum-likelihood
scale is ``s = sqrt(mean((error/σ)²))``; a calibrated committee has ``s`` near 1,
an over-confident one ``s > 1``. Multiply the committee's σ by ``s`` to get
uncertainties that match the observed errors on the test split.

Members trained with D3 dispersion subtracted were evaluated residual against
residual (:mod:`physpack.evaluation.evaluate`): the errors are those of the totals,
and ``metrics.json`` carries the members' shared ``dispersion`` note.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from physpack.atomic import atomic_write_bytes
from physpack.dispersion import committee_dispersion
from physpack.errors import InputError, cli_entry
from physpack.evaluation.predictions import SplitPredictions
from physpack.metrics import Committee, committee, convert, error_sums, unit_of

#: quantile bins of σ in the calibration curve
CALIBRATION_BINS = 10


@dataclasses.dataclass(frozen=True)
class EnsemblePredictions:
    """A committee's predictions of one split, molecules in dataset order.

    Attributes:
        mol_index: int64 (M,) dataset index of each molecule.
        n_atoms: int32 (M,); offsets: int64 (M + 1,); Z: int32 (A,).
        E_true: float64 (M,) eV; E_members: float64 (K, M) eV of each member.
        F_true: float64 (A, 3) eV/Å or None; F_members: float64 (K, A, 3) or None.
        D_true: float64 (M, 3) e·Å or None; D_members: float64 (K, M, 3) or None
            (members that predict dipoles).
        Q_members: float64 (K, A) e or None (members that predict charges).
    """

    mol_index: np.ndarray
    n_atoms: np.ndarray
    offsets: np.ndarray
    Z: np.ndarray
    E_true: np.ndarray
    E_members: np.ndarray
    F_true: np.ndarray | None = None
    F_members: np.ndarray | None = None
    D_true: np.ndarray | None = None
    D_members: np.ndarray | None = None
    Q_members: np.ndarray | None = None

    def committee(self, quantity: str) -> Committee | None:
        """The members' predictions of ``quantity`` (``energy``, ``forces``,
        ``dipole``, ``charges``), or ``None`` where they have none."""
        members = {
            "energy": self.E_members,
            "forces": self.F_members,
            "dipole": self.D_members,
            "charges": self.Q_members,
        }[quantity]
        return None if members is None else Committee(members)

    @property
    def E_mean(self) -> np.ndarray:
        return self.committee("energy").mean

    @property
    def E_std(self) -> np.ndarray:
        return self.committee("energy").std

    @property
    def F_mean(self) -> np.ndarray | None:
        c = self.committee("forces")
        return None if c is None else c.mean

    @property
    def F_std(self) -> np.ndarray | None:
        c = self.committee("forces")
        return None if c is None else c.std


def combine(
    paths: Sequence[str | os.PathLike], split: str = "test"
) -> EnsemblePredictions:
    """Stack the ``split`` predictions of several members' ``predictions.npz``
    (energies and forces; dipoles and charges where every member has them).

    Raises:
        InputError: a file lacks the split, or the members predicted different
            molecules (named by file).
    """
    if not paths:
        raise InputError("ensemble: no member predictions given")
    members = [_read_split(p, split) for p in paths]
    first = members[0]
    for path, m in zip(paths[1:], members[1:], strict=True):
        for key in ("mol_index", "n_atoms", "Z"):
            mine, theirs = getattr(m, key), getattr(first, key)
            if mine.shape != theirs.shape or not np.array_equal(mine, theirs):
                raise InputError(
                    f"{path}: {split}_{key} differs from {paths[0]}; the members "
                    f"of an ensemble must be evaluated on the same split"
                )
    stacked = {
        q: c.members for q, c in committee([m.predicted() for m in members]).items()
    }
    # errors need references: forces and dipoles only where the data has them
    with_f = "forces" in stacked and first.F_true is not None
    with_d = "dipole" in stacked and first.D_true is not None
    return EnsemblePredictions(
        mol_index=first.mol_index,
        n_atoms=first.n_atoms,
        offsets=first.offsets,
        Z=first.Z,
        E_true=first.E_true.astype(np.float64),
        E_members=stacked["energy"],
        F_true=first.F_true.astype(np.float64) if with_f else None,
        F_members=stacked["forces"] if with_f else None,
        D_true=first.D_true.astype(np.float64) if with_d else None,
        D_members=stacked.get("dipole"),
        Q_members=stacked.get("charges"),
    )


def _read_split(path: str | os.PathLike, split: str) -> SplitPredictions:
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files if k.startswith(f"{split}_")}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read predictions ({exc})") from exc
    try:
        return SplitPredictions.from_arrays(arrays, split)
    except KeyError as exc:
        raise InputError(f"{path}: no {exc.args[0]} (not a predictions file?)") from exc
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc


def members_dispersion(paths: Sequence[str | os.PathLike]) -> dict[str, Any] | None:
    """The D3 note the members' ``predictions.npz`` share (``None``: none, also
    for files written before it was recorded); InputError when they differ."""
    notes = []
    for path in paths:
        try:
            with np.load(path) as data:
                text = str(data["dispersion"]) if "dispersion" in data.files else ""
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read predictions ({exc})") from exc
        notes.append((str(path), json.loads(text) if text else None))
    shared = committee_dispersion(notes)
    return None if shared is None else dict(shared)


def calibration(error: np.ndarray, sigma: np.ndarray) -> dict[str, Any]:
    """How well the predicted spread ``sigma`` matches ``error`` (same shape).

    Returns a JSON-ready dict: ``scale`` (maximum-likelihood factor s, see the
    module docstring), ``spearman`` (rank correlation of |error| and σ),
    ``within_1sigma``/``within_2sigma`` (fractions of |error| ≤ k·s·σ; a Gaussian
    gives 0.683 and 0.954), and ``curve``: per quantile bin of σ, the RMS of σ and
    the RMSE of the error (a calibrated committee lies on the diagonal).
    """
    err = np.asarray(error, np.float64).ravel()
    sig = np.asarray(sigma, np.float64).ravel()
    if err.shape != sig.shape:
        raise ValueError(f"calibration: error {err.shape} and sigma {sig.shape}")
    ok = np.isfinite(err) & np.isfinite(sig) & (sig > 0)
    err, sig = err[ok], sig[ok]
    if err.size == 0:
        nan = float("nan")
        return {
            "n": 0,
            "scale": nan,
            "spearman": nan,
            "within_1sigma": nan,
            "within_2sigma": nan,
            "curve": {"sigma_rms": [], "error_rmse": []},
        }
    scale = float(np.sqrt(np.mean((err / sig) ** 2)))
    z = np.abs(err) / (scale * sig)
    order = np.argsort(sig, kind="stable")
    bins = np.array_split(order, min(CALIBRATION_BINS, err.size))
    return {
        "n": int(err.size),
        "scale": scale,
        "spearman": _spearman(np.abs(err), sig),
        "within_1sigma": float(np.mean(z <= 1.0)),
        "within_2sigma": float(np.mean(z <= 2.0)),
        "curve": {
            "sigma_rms": [float(np.sqrt(np.mean(sig[b] ** 2))) for b in bins],
            "error_rmse": [float(np.sqrt(np.mean(err[b] ** 2))) for b in bins],
        },
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    if a.size < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    # ties share their mean rank
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def ensemble_metrics(pred: EnsemblePredictions) -> dict[str, Any]:
    """Errors of the committee mean and the calibration of its spread.

    ``energy``: per molecule, eV; ``forces``: per Cartesian component, eV/Å;
    ``dipole`` (members that predict dipoles, data that has them): per
    component, e·Å. Each has ``mae``, ``rmse``, ``mean_std`` (mean committee
    spread) and ``calibration`` (:func:`calibration`); plus ``members``,
    ``n_molecules`` and ``units``.
    """
    out: dict[str, Any] = {
        "members": int(pred.E_members.shape[0]),
        "n_molecules": int(pred.mol_index.size),
        "units": {q: unit_of(q).label for q in ("energy", "forces")},
    }
    references = {"energy": pred.E_true, "forces": pred.F_true, "dipole": pred.D_true}
    for name, true in references.items():
        c = pred.committee(name)
        if c is None or true is None:
            continue
        err = c.mean - true
        sums = error_sums(err)
        out["units"][name] = unit_of(name).label
        out[name] = {
            "mae": sums.mae,
            "rmse": sums.rmse,
            "mean_std": float(np.mean(c.std)),
            "calibration": calibration(err, c.std),
        }
    return out


@cli_entry("physpack ensemble")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack ensemble",
        description="Evaluate a committee from its members' predictions.npz: error "
        "of the mean, spread and calibration (test split).",
    )
    parser.add_argument(
        "predictions", nargs="+", help="the members' predictions.npz (evaluate)"
    )
    parser.add_argument("--split", default="test", help="split to evaluate")
    parser.add_argument("--output", required=True, help="metrics.json to write")
    args = parser.parse_args(argv)
    pred = combine(args.predictions, args.split)
    metrics = {"split": args.split, "members_predictions": args.predictions}
    metrics["dispersion"] = members_dispersion(args.predictions)
    metrics |= ensemble_metrics(pred)
    atomic_write_bytes(args.output, (json.dumps(metrics, indent=2) + "\n").encode())
    for q, unit in (("energy", "meV"), ("forces", "meV/Angstrom"), ("dipole", "Debye")):
        if q in metrics:
            m = metrics[q]
            print(
                f"{q}: MAE of the mean {convert(m['mae'], q, unit):.4g} {unit}, mean "
                f"std {convert(m['mean_std'], q, unit):.4g} {unit}, calibration "
                f"scale {m['calibration']['scale']:.3g}"
            )
    return 0
