"""Geometry checks of model inputs: coincident atoms.

Two atoms at the same position make the interatomic distance 0, where the radial
basis, the cutoff function and their gradients are not defined: energies and
forces come out NaN without any error. These checks refuse such inputs with the
atoms named, before the model runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from ase.data import chemical_symbols

from physpack.errors import InputError

#: Å; atoms closer than this are treated as coincident.
COINCIDENT_DISTANCE = 1e-2


def _name(z: int, index: int) -> str:
    symbol = chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}"
    return f"{index} ({symbol})"


def check_coincident_atoms(
    atomic_numbers: np.ndarray,
    positions: np.ndarray,
    where: str,
    min_distance: float = COINCIDENT_DISTANCE,
) -> None:
    """Refuse a molecule with two atoms closer than ``min_distance``.

    Args:
        atomic_numbers: int (n,).
        positions: float (n, 3) Å.
        where: what the molecule is, for the message.
        min_distance: Å.

    Raises:
        InputError: naming the first such pair (0-based atom indices, elements and
            their distance).
    """
    r = np.asarray(positions, np.float64)
    n = r.shape[0]
    if n < 2:
        return
    d = np.sqrt(((r[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    d[np.tril_indices(n)] = np.inf
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    if d[i, j] < min_distance:
        z = np.asarray(atomic_numbers)
        raise InputError(
            f"{where}: atoms {_name(int(z[i]), int(i))} and {_name(int(z[j]), int(j))} "
            f"are {d[i, j]:.3g} Å apart (coincident; the model needs distances above "
            f"{min_distance} Å)"
        )


def check_batch_coincident_atoms(
    batch: Mapping[str, np.ndarray],
    where: str,
    min_distance: float = COINCIDENT_DISTANCE,
) -> None:
    """Refuse a packed batch in which two atoms of one molecule are closer than
    ``min_distance`` Å, over the batch's real pairs (``dst_idx``, ``src_idx``,
    ``pair_mask``).

    Raises:
        InputError: naming the molecule (``mol_index`` when the batch has it, else
            its slot) and the two atoms (indices within the molecule, elements).
    """
    mask = np.asarray(batch["pair_mask"], bool)
    if not mask.any():
        return
    dst = np.asarray(batch["dst_idx"])[mask]
    src = np.asarray(batch["src_idx"])[mask]
    r = np.asarray(batch["R"], np.float64)
    d = np.sqrt(((r[dst] - r[src]) ** 2).sum(-1))
    k = int(np.argmin(d))
    if not d[k] < min_distance:
        return
    seg = np.asarray(batch["batch_segments"])
    slot = int(seg[dst[k]])
    first = int(np.argmax(seg == slot))
    mol = int(batch["mol_index"][slot]) if "mol_index" in batch else slot
    z = np.asarray(batch["Z"])
    a, b = sorted((int(dst[k]), int(src[k])))
    raise InputError(
        f"{where}: molecule {mol}: atoms {_name(int(z[a]), a - first)} and "
        f"{_name(int(z[b]), b - first)} are {d[k]:.3g} Å apart (coincident; the "
        f"model needs distances above {min_distance} Å)"
    )
