"""The predictions of one split (or any set of molecules): the container that
inference (:mod:`physpack.evaluation.inference`) fills, the evaluation measures,
``predictions.npz`` stores and committees combine. Numpy only."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class SplitPredictions:
    """Reference and predicted values of one split, molecules in dataset order.

    Attributes:
        mol_index: int64 (M,) dataset index of each molecule, increasing.
        n_atoms: int32 (M,) atoms per molecule.
        offsets: int64 (M + 1,) start of each molecule in the per-atom arrays.
        Z: int32 (A,) atomic numbers, A = n_atoms.sum().
        E_true, E_pred: float64 (M,) total energies [eV].
        F_true: float64 (A, 3) reference forces [eV/Å], or ``None`` when the data
            has no forces; F_pred: predicted forces (always present when built
            by :func:`predict_split`).
        D_true: float64 (M, 3) reference dipole moments [e·Å], or ``None`` unless
            kept; D_pred: predicted dipoles, or ``None`` unless the model
            predicts them.
        Q_pred: float64 (A,) predicted atomic charges [e], or ``None`` unless the
            model predicts them.
    """

    mol_index: np.ndarray
    n_atoms: np.ndarray
    offsets: np.ndarray
    Z: np.ndarray
    E_true: np.ndarray
    E_pred: np.ndarray
    F_true: np.ndarray | None = None
    F_pred: np.ndarray | None = None
    D_true: np.ndarray | None = None
    D_pred: np.ndarray | None = None
    Q_pred: np.ndarray | None = None

    def __post_init__(self) -> None:
        m, a = self.mol_index.shape[0], int(self.offsets[-1])
        shapes = {
            "n_atoms": (self.n_atoms, (m,)),
            "offsets": (self.offsets, (m + 1,)),
            "Z": (self.Z, (a,)),
            "E_true": (self.E_true, (m,)),
            "E_pred": (self.E_pred, (m,)),
            "F_true": (self.F_true, (a, 3)),
            "F_pred": (self.F_pred, (a, 3)),
            "D_true": (self.D_true, (m, 3)),
            "D_pred": (self.D_pred, (m, 3)),
            "Q_pred": (self.Q_pred, (a,)),
        }
        for name, (arr, want) in shapes.items():
            if arr is not None and arr.shape != want:
                raise ValueError(
                    f"SplitPredictions.{name}: shape {arr.shape}, want {want}"
                )
        if self.F_true is not None and self.F_pred is None:
            raise ValueError("SplitPredictions: F_true needs F_pred")
        if self.D_true is not None and self.D_pred is None:
            raise ValueError("SplitPredictions: D_true needs D_pred")

    @property
    def n_molecules(self) -> int:
        return int(self.mol_index.shape[0])

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays under ``<prefix>_<name>`` keys (absent ones left out)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f"{prefix}_{f.name}"] = value
        return out

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], prefix: str
    ) -> SplitPredictions:
        """The inverse of :meth:`to_arrays` (e.g. on ``np.load`` of
        ``predictions.npz``); KeyError names a missing required array."""
        values = {}
        for f in dataclasses.fields(cls):
            key = f"{prefix}_{f.name}"
            if key in arrays:
                values[f.name] = np.asarray(arrays[key])
            elif f.default is dataclasses.MISSING:
                raise KeyError(key)
        return cls(**values)

    def predicted(self) -> dict[str, np.ndarray | None]:
        """The predictions by :data:`physpack.metrics.COMMITTEE_QUANTITIES` name:
        ``energy`` (M,) eV, ``forces`` (A, 3) eV/Å, ``dipole`` (M, 3) e·Å,
        ``charges`` (A,) e (``None`` where not predicted)."""
        return {
            "energy": self.E_pred,
            "forces": self.F_pred,
            "dipole": self.D_pred,
            "charges": self.Q_pred,
        }
