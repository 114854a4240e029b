"""What the reference-data generators share: bond graphs, the GFN2-xTB calculator,
padded arrays and the staged NPZ write.

``make_demo_dataset.py`` (thermal MD of a few dozen molecules) and
``make_transfer_dataset.py`` (perturbed conformers of hundreds of FreeSolv
molecules) differ in how they make geometries; what they keep, how they label it
and how they write it is defined here once. Imported by name, so both scripts run as
``python scripts/<name>.py`` from anywhere (Python puts ``scripts/`` on the path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import ase
import numpy as np
from ase.data import covalent_radii
from physpack.atomic import StagedOutputs
from physpack.errors import ConfigError

# bond-graph factors on the sum of covalent radii: a bond at equilibrium, a bond
# that broke (stretched past 1.6x) and a contact that formed (under 1.05x); the gap
# between the last two is hysteresis, so thermal motion does not flip the graph
BOND = 1.2
BROKEN = 1.6
FORMED = 1.05

# the units of the keys every generator writes (``info["units"]``)
UNITS = {"R": "Angstrom", "E": "eV", "F": "eV/Angstrom", "D": "e*Angstrom", "Q": "e"}

METHOD = "GFN2-xTB (tblite ASE calculator), neutral singlet, 300 K smearing"


class Frame(Protocol):
    """One labelled configuration (unpadded): Z int32 (n,); R float32 (n, 3) Å;
    F float32 (n, 3) eV/Å; E eV; D float64 (3,) e·Å."""

    Z: np.ndarray
    R: np.ndarray
    F: np.ndarray
    E: float
    D: np.ndarray


def bond_graph(Z: np.ndarray, R: np.ndarray, factor: float) -> np.ndarray:
    """bool (n, n): pairs of atoms (numbers ``Z`` (n,), positions ``R`` (n, 3) Å)
    closer than ``factor`` times the sum of their covalent radii; diagonal False."""
    rc = covalent_radii[Z]
    d = np.linalg.norm(R[:, None, :] - R[None, :, :], axis=-1)
    bonded = d < factor * (rc[:, None] + rc[None, :])
    np.fill_diagonal(bonded, False)
    return bonded


def same_topology(Z: np.ndarray, R: np.ndarray, reference: np.ndarray) -> bool:
    """Whether no bond of ``reference`` (bool (n, n)) broke and no new bond formed
    at positions ``R`` (n, 3) Å, with the hysteresis of ``BROKEN``/``FORMED``."""
    broken = reference & ~bond_graph(Z, R, BROKEN)
    formed = ~reference & bond_graph(Z, R, FORMED)
    return not (broken.any() or formed.any())


def gfn2_calculator(extra: str) -> ase.calculators.calculator.Calculator:
    """A fresh tblite GFN2-xTB calculator, neutral singlet, silent; without tblite
    a one-line error naming the optional dependency group ``extra`` to install."""
    try:
        from tblite.ase import TBLite
    except ImportError as exc:
        raise ConfigError(
            f"tblite is not installed ({exc}); install it with: "
            f"pip install -e .[{extra}]"
        ) from None
    return TBLite(method="GFN2-xTB", charge=0, multiplicity=1, verbosity=0)


def padded(frames: Sequence[Frame]) -> dict[str, np.ndarray]:
    """The padded arrays of ``physpack convert``'s format from unpadded frames:
    R float32 (n, Amax, 3), Z int32 (n, Amax) (0 = padding), N int32 (n,),
    E float64 (n,), F float32 (n, Amax, 3), Q float64 (n,) (all 0: neutral),
    D float64 (n, 3)."""
    n = len(frames)
    amax = max(len(f.Z) for f in frames)
    arrays = {
        "R": np.zeros((n, amax, 3), np.float32),
        "Z": np.zeros((n, amax), np.int32),
        "N": np.array([len(f.Z) for f in frames], np.int32),
        "E": np.array([f.E for f in frames], np.float64),
        "F": np.zeros((n, amax, 3), np.float32),
        "Q": np.zeros(n, np.float64),
        "D": np.stack([f.D for f in frames]).astype(np.float64),
    }
    for i, f in enumerate(frames):
        arrays["R"][i, : len(f.Z)] = f.R
        arrays["Z"][i, : len(f.Z)] = f.Z
        arrays["F"][i, : len(f.Z)] = f.F
    return arrays


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write a compressed NPZ to a temporary sibling, then rename it to ``path``
    (physpack's :class:`~physpack.atomic.StagedOutputs`): an interrupted run leaves
    no file that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with StagedOutputs() as staged, open(staged.file(path), "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path
