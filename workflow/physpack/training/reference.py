"""The run's per-element reference energies and energy scale: fitted on the
training split or given (``train.reference_energies``), the same in every process.

The constants themselves, their least-squares fit and the given values are
defined in :mod:`physpack.reference` (JAX-free, shared with the data stages);
this module adds what training needs: the agreement between processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from ase.data import chemical_symbols

from physpack.config import TrainConfig
from physpack.reference import (
    EnergyConstants,
    PackedBatches,
    RankDeficientWarning,
    fit_energy_constants,
    given_reference_energies,
)

__all__ = [
    "EnergyConstants",
    "RankDeficientWarning",
    "energy_constants_for",
    "fit_energy_constants",
    "given_reference_energies",
]


def energy_constants_for(
    loader: PackedBatches,
    max_atomic_number: int,
    cfg: TrainConfig,
    log: Callable[[str], None] = print,
) -> tuple[EnergyConstants, dict[str, object]]:
    """The run's constants: fitted, or from ``train.reference_energies``; the
    statistics then say which (``reference_energies``: ``"fit"`` or the given
    values in eV by element symbol). Identical data give identical fits in every
    process; process 0's values are made exact."""
    from physpack.training import parallel

    given = given_reference_energies(cfg)
    constants, stats = fit_energy_constants(loader, max_atomic_number, given)
    ref, scale = parallel.broadcast_from_main(
        (constants.reference_energies, np.float64(constants.scale))
    )
    constants = dataclasses.replace(
        constants, reference_energies=ref, scale=float(scale)
    )
    out: dict[str, object] = dict(stats)
    if given is None:
        out["reference_energies"] = "fit"
    else:
        out["reference_energies"] = {
            chemical_symbols[z]: float(v) for z, v in sorted(given.items())
        }
        log(
            "reference energies given (eV): "
            + ", ".join(f"{k} {v:.6g}" for k, v in out["reference_energies"].items())
        )
    return constants, out
