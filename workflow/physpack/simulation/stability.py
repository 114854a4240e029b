"""When a molecular-dynamics run of a molecule has broken.

Broken means one of:

- a bond stretched beyond ``broken_stretch`` (default :data:`BROKEN_STRETCH`) × its
  starting length, where a bond is a pair closer than :data:`BOND_FACTOR` × the sum
  of the two covalent radii (ASE's ``covalent_radii``) at the start;
- two atoms that are not bonded at the start closer than ``clash_factor`` (default
  :data:`CLASH_FACTOR`) × the sum of their covalent radii;
- a non-finite position or energy.

Plain numpy: the criterion runs on the host between compiled blocks of steps.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from ase.data import covalent_radii

from physpack.config import MDConfig

BOND_FACTOR = 1.2
#: the defaults of the config's md section (the schema is their one definition)
BROKEN_STRETCH = MDConfig().broken_stretch
CLASH_FACTOR = MDConfig().clash_factor


@dataclasses.dataclass(frozen=True)
class Bonds:
    """A molecule's bonds and close-contact limits, taken from its start geometry.

    Attributes:
        i, j: int64 (B,) the bonded atom pairs (i < j).
        length: float64 (B,) their starting lengths, Å.
        clash: float64 (n, n) the closest two atoms may come, Å (0 on the diagonal
            and for bonded pairs).
        broken_stretch: the stretch of a bond beyond which it is broken.
    """

    i: np.ndarray
    j: np.ndarray
    length: np.ndarray
    clash: np.ndarray
    broken_stretch: float = BROKEN_STRETCH

    @classmethod
    def of(
        cls,
        numbers: np.ndarray,
        positions: np.ndarray,
        broken_stretch: float = BROKEN_STRETCH,
        clash_factor: float = CLASH_FACTOR,
    ) -> Bonds:
        """The bonds of a molecule of ``numbers`` (n,) at ``positions`` (n, 3) Å."""
        radii = covalent_radii[np.asarray(numbers)]
        limit = radii[:, None] + radii[None, :]
        d = _distances(positions)
        bonded = np.triu(d < BOND_FACTOR * limit, 1)
        i, j = np.nonzero(bonded)
        clash = clash_factor * limit
        clash[bonded | bonded.T] = 0.0
        np.fill_diagonal(clash, 0.0)
        return cls(i, j, d[i, j], clash, broken_stretch)

    def _stretches(self, positions: np.ndarray) -> np.ndarray:
        """Each bond's length over its starting length, (B,)."""
        d = np.linalg.norm(positions[self.i] - positions[self.j], axis=-1)
        return d / self.length

    def max_stretch(self, positions: np.ndarray) -> float:
        """Longest bond over its starting length (1.0 without bonds)."""
        if self.i.size == 0:
            return 1.0
        return float(np.max(self._stretches(positions)))

    def broken(self, positions: np.ndarray, energy: float = 0.0) -> str | None:
        """Why the molecule at ``positions`` (n, 3) Å with potential ``energy`` (eV)
        counts as broken, or ``None`` while it is intact."""
        if not (np.all(np.isfinite(positions)) and np.isfinite(energy)):
            return "non-finite positions or energy"
        stretches = self._stretches(positions)
        k = int(np.argmax(stretches)) if stretches.size else 0
        if stretches.size and stretches[k] > self.broken_stretch:
            return (
                f"bond {self.i[k]}-{self.j[k]} stretched to {stretches[k]:.2f}x its "
                f"starting length"
            )
        d = _distances(positions)
        close = np.argwhere(np.triu(d < self.clash, 1))
        if close.size:
            a, b = (int(x) for x in close[0])
            return f"atoms {a} and {b} (not bonded) came within {d[a, b]:.2f} A"
        return None


def _distances(positions: np.ndarray) -> np.ndarray:
    x = np.asarray(positions, np.float64)
    return np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
