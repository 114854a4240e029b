"""Per-element reference energies E0 and the energy scale of the residual.

The model learns ``E − Σ_i E0[Z_i]`` (eV), so the reference energies take the
composition out of the energy before the network sees it. :class:`EnergyConstants`
holds them with the energy scale (stored in every checkpoint);
:func:`fit_energy_constants` fits them by least squares on the training split,
streamed over packed batches. This module needs numpy and ASE only (no JAX): the
data stages (validation's plausibility checks), the model and training all import
it, so that editing the model never reruns the data stages.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from physpack.config import TrainConfig
from physpack.errors import ConfigError, InputError
from physpack.units import energy_factor


class PackedBatches(Protocol):
    """What :func:`fit_energy_constants` reads: a loader's packed batches of one
    epoch (:class:`physpack.data.loader.PackedMemmapLoader`) and its path."""

    path: Any

    def packed_batches(self, epoch: int) -> Iterator[Mapping[str, np.ndarray]]: ...


@dataclasses.dataclass(frozen=True)
class EnergyConstants:
    """Per-element reference energies and the energy scale of the residual.

    Attributes:
        reference_energies: float64 (max_atomic_number + 1,) eV per atom of each
            element (least-squares fit on the training split; 0 for elements
            absent from it).
        scale: eV; the network's dimensionless atomic energies are multiplied by it.
        elements: sorted atomic numbers present in the training data.
    """

    reference_energies: np.ndarray
    scale: float
    elements: tuple[int, ...]

    def reference_sum(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """Σ_i ref[Z_i] per molecule slot, float64 (M,) eV, computed on the host
        (0 for padding)."""
        z = np.asarray(batch["Z"])
        weights = self.reference_energies[z] * np.asarray(batch["atom_mask"])
        return np.bincount(
            np.asarray(batch["batch_segments"]),
            weights=weights,
            minlength=len(batch["Qtot"]),
        )

    def check_elements(self, z: np.ndarray, where: str) -> None:
        """Raise :class:`InputError` if ``z`` holds elements absent from training."""
        unknown = sorted(set(np.unique(z[z > 0]).tolist()) - set(self.elements))
        if unknown:
            raise InputError(
                f"{where}: element(s) {unknown} never seen in training "
                f"(model knows {list(self.elements)})"
            )

    def check_batch(self, batch: Mapping[str, np.ndarray], where: str) -> None:
        """Refuse a packed batch holding an element absent from training.

        Raises:
            InputError: naming the first such molecule (dataset index), its element
            and the trained elements.
        """
        z = np.asarray(batch["Z"])
        ok = np.isin(z, self.elements) | ~np.asarray(batch["atom_mask"], bool)
        if ok.all():
            return
        a = int(np.argmin(ok))
        mol = int(batch["mol_index"][batch["batch_segments"][a]])
        raise InputError(
            f"{where}: molecule {mol} contains element {chemical_symbols[int(z[a])]} "
            f"(Z={int(z[a])}), which the model was not trained for (trained "
            f"elements: {', '.join(chemical_symbols[e] for e in self.elements)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_energies": np.asarray(self.reference_energies, np.float64),
            "scale": float(self.scale),
            "elements": np.asarray(self.elements, np.int32),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnergyConstants:
        return cls(
            reference_energies=np.asarray(d["reference_energies"], np.float64),
            scale=float(d["scale"]),
            elements=tuple(int(z) for z in np.asarray(d["elements"]).ravel()),
        )


class RankDeficientWarning(UserWarning):
    """The compositions of the training data do not determine every element's
    reference energy (e.g. a single-molecule, MD17-like dataset)."""


def fit_energy_constants(
    loader: PackedBatches,
    max_atomic_number: int,
    reference: Mapping[int, float] | None = None,
) -> tuple[EnergyConstants, dict[str, float]]:
    """Least-squares per-element reference energies and the energy scale, streamed
    over every molecule of ``loader`` (two passes; memory independent of size).

    Reference energies minimise Σ_mol (E − Σ_i ref[Z_i])², solved from the float64
    normal equations (CᵀC) ref = CᵀE of the composition matrix C; elements absent
    from the data get 0 (minimum-norm solution). The scale is the standard
    deviation of the per-atom residual (E − Σ ref)/N, or the RMS of the force
    components when the data has forces and that is larger: atomic energies then
    start on the scale of the forces the network has to follow.

    When the composition matrix is rank-deficient (fewer independent compositions
    than elements: every molecule of an MD17-like set has the same formula), the
    minimum-norm solution is one of infinitely many and its per-element values are
    unphysical (e.g. H −612 eV); a :class:`RankDeficientWarning` says so: give
    ``train.reference_energies`` then.

    Args:
        loader: the training subset.
        max_atomic_number: the model's largest element.
        reference: given reference energies (eV per atom, by atomic number): used
            instead of the fit; every element of the data must have one.

    Returns:
        The constants and statistics: ``energy_residual_std_eV_per_atom``,
        ``forces_rms_eV_per_A``, ``forces_std_eV_per_A``, ``n_molecules``,
        ``composition_rank``, ``n_elements``.

    Raises:
        InputError: an atomic number above ``max_atomic_number`` (named), or an
            element of the data without a given reference energy.
    """
    sums = _composition_sums(loader, max_atomic_number)
    present = sums.present
    rank = int(np.linalg.matrix_rank(sums.ctc[np.ix_(present, present)]))
    n_elements = int(present.sum())
    if reference is None:
        ref = _least_squares_reference(sums, rank, loader.path)
    else:
        ref = _given_reference(reference, present, loader.path)
    r_std = _residual_std(loader, ref, max_atomic_number, sums.n_mol)
    f_rms, f_std = sums.force_spread()
    scale = max(r_std, f_rms)
    if not scale > 0:
        scale = 1.0
    constants = EnergyConstants(
        reference_energies=ref,
        scale=float(scale),
        elements=tuple(int(z) for z in np.flatnonzero(present)),
    )
    stats = {
        "n_molecules": float(sums.n_mol),
        "energy_residual_std_eV_per_atom": r_std,
        "forces_rms_eV_per_A": f_rms,
        "forces_std_eV_per_A": f_std,
        "composition_rank": float(rank),
        "n_elements": float(n_elements),
    }
    return constants, stats


@dataclasses.dataclass
class _CompositionSums:
    """The float64 sums of the first pass of :func:`fit_energy_constants`.

    Attributes:
        ctc: (K, K) CᵀC of the composition matrix C (molecules × elements).
        cte: (K,) eV, CᵀE.
        present: bool (K,), the elements of the data.
        f_sum: (3,) eV/Å, the sum of the force vectors; ``f_sq`` (eV/Å)² the sum of
            the squared components; ``f_n`` the number of force vectors (atoms).
        n_mol: the number of molecules.
    """

    ctc: np.ndarray
    cte: np.ndarray
    present: np.ndarray
    f_sum: np.ndarray
    f_sq: float = 0.0
    f_n: int = 0
    n_mol: int = 0

    def force_spread(self) -> tuple[float, float]:
        """The RMS and the standard deviation of all force components pooled (eV/Å;
        0 without forces)."""
        if not self.f_n:
            return 0.0, 0.0
        f_rms = math.sqrt(self.f_sq / (3 * self.f_n))
        # the spread of all force components pooled (what a force MAE is compared with)
        f_mean = float(self.f_sum.sum()) / (3 * self.f_n)
        f_std = math.sqrt(max(self.f_sq / (3 * self.f_n) - f_mean**2, 0.0))
        return f_rms, f_std


def _compositions(
    batch: Mapping[str, np.ndarray], max_atomic_number: int, path: Any
) -> np.ndarray:
    """The element counts of a packed batch's real molecules, float64
    (molecules, max_atomic_number + 1).

    Raises:
        InputError: an atomic number above ``max_atomic_number`` (named, with its
            molecule).
    """
    K = max_atomic_number + 1
    z = batch["Z"]
    if int(z.max()) >= K:
        a = int(np.argmax(z >= K))
        mol = int(batch["mol_index"][batch["batch_segments"][a]])
        raise InputError(
            f"{path}: molecule {mol} has atomic number {int(z[a])} above "
            f"model.max_atomic_number={max_atomic_number}"
        )
    M = batch["Qtot"].shape[0]
    counts = np.bincount(
        batch["batch_segments"].astype(np.int64) * K + z,
        weights=batch["atom_mask"].astype(np.float64),
        minlength=M * K,
    ).reshape(M, K)
    return counts[batch["molecule_mask"]]


def _composition_sums(
    loader: PackedBatches, max_atomic_number: int
) -> _CompositionSums:
    """The first pass: the normal equations' sums and the force statistics."""
    K = max_atomic_number + 1
    sums = _CompositionSums(
        ctc=np.zeros((K, K)),
        cte=np.zeros(K),
        present=np.zeros(K, dtype=bool),
        f_sum=np.zeros(3),
    )
    for batch in loader.packed_batches(epoch=0):
        c = _compositions(batch, max_atomic_number, loader.path)
        e = batch["E"][batch["molecule_mask"]]
        sums.ctc += c.T @ c
        sums.cte += c.T @ e
        sums.present |= c.sum(0) > 0
        sums.n_mol += c.shape[0]
        if "F" in batch:
            f = batch["F"][batch["atom_mask"]].astype(np.float64)
            sums.f_sum += f.sum(0)
            sums.f_sq += float((f**2).sum())
            sums.f_n += f.shape[0]
    return sums


def _least_squares_reference(
    sums: _CompositionSums, rank: int, path: Any
) -> np.ndarray:
    """The minimum-norm least-squares reference energies, float64 (K,) eV (0 for
    absent elements), with a :class:`RankDeficientWarning` when ``rank`` is below
    the number of elements present."""
    ref = np.linalg.lstsq(sums.ctc, sums.cte, rcond=None)[0]
    ref[~sums.present] = 0.0
    n_elements = int(sums.present.sum())
    if rank < n_elements:
        names = ", ".join(chemical_symbols[z] for z in np.flatnonzero(sums.present))
        warnings.warn(
            f"{path}: the compositions of the training molecules have rank "
            f"{rank} for {n_elements} elements ({names}): the fitted per-element "
            "reference energies are not determined by the data and will be "
            "wrong for other compositions; give train.reference_energies "
            "(e.g. free-atom energies)",
            RankDeficientWarning,
            stacklevel=3,  # the caller of fit_energy_constants
        )
    return ref


def _given_reference(
    reference: Mapping[int, float], present: np.ndarray, path: Any
) -> np.ndarray:
    """The given reference energies as float64 (K,) eV (elements beyond K
    dropped).

    Raises:
        InputError: an element present in the data has no given value.
    """
    missing = [int(z) for z in np.flatnonzero(present) if int(z) not in reference]
    if missing:
        raise InputError(
            f"{path}: train.reference_energies has no value for "
            f"{', '.join(chemical_symbols[z] for z in missing)}, present in the "
            "training data"
        )
    ref = np.zeros(len(present))
    for z, value in reference.items():
        if int(z) < len(present):
            ref[int(z)] = float(value)
    return ref


def _residual_std(
    loader: PackedBatches, reference: np.ndarray, max_atomic_number: int, n_mol: int
) -> float:
    """The second pass: the standard deviation of the per-atom residual
    (E − Σ ref)/N over the ``n_mol`` molecules of ``loader``, eV per atom."""
    # In float64: residuals are small differences of large numbers.
    r_sum = r_sq = 0.0
    for batch in loader.packed_batches(epoch=0):
        c = _compositions(batch, max_atomic_number, loader.path)
        n = c.sum(1)
        r = (batch["E"][batch["molecule_mask"]] - c @ reference) / n
        r_sum += float(r.sum())
        r_sq += float((r**2).sum())
    r_mean = r_sum / n_mol
    return math.sqrt(max(r_sq / n_mol - r_mean**2, 0.0))


def given_reference_energies(cfg: TrainConfig) -> dict[int, float] | None:
    """``train.reference_energies`` as eV per atom by atomic number, or ``None``
    for ``fit``.

    Raises:
        ConfigError: an unknown element symbol or a non-numeric value.
    """
    given = cfg.reference_energies
    if given is None or given == "fit":
        return None
    if not isinstance(given, Mapping):
        raise ConfigError(
            f"train.reference_energies: expected 'fit' or a mapping of element "
            f"symbols to energies, got {given!r}"
        )
    factor = energy_factor(cfg.reference_energy_unit)
    out: dict[int, float] = {}
    for symbol, value in given.items():
        if symbol not in atomic_numbers:
            raise ConfigError(
                f"train.reference_energies: {symbol!r} is not an element symbol"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"train.reference_energies.{symbol}: expected a number, got {value!r}"
            )
        out[atomic_numbers[symbol]] = float(value) * factor
    return out
