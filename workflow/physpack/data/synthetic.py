"""Synthetic molecular datasets for tests and benchmarks (not physics).

Molecules have QM9-like sizes (3–29 atoms, mean ≈ 18), H/C/N/O/F compositions,
atoms on a jittered cubic lattice (nearest neighbours ≈ 1.5 Å apart, so distance
checks pass) and energies/forces that are smooth functions of the composition plus
noise. Writers stream, so multi-GB files can be made with bounded memory.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

ELEMENTS = np.array([1, 6, 7, 8, 9], dtype=np.int32)
ELEMENT_P = np.array([0.5, 0.33, 0.07, 0.08, 0.02])
#: per-element energy [eV] used to make total energies (roughly GFN2-like magnitudes)
ELEMENT_ENERGY = {1: -10.7, 6: -48.8, 7: -71.0, 8: -103.0, 9: -137.0}


def qm9_like_sizes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Atom counts int32 (n,) in 3..29 with mean ≈ 18 (QM9's shape, roughly)."""
    sizes = np.rint(rng.normal(18.0, 3.0, size=n))
    return np.clip(sizes, 3, 29).astype(np.int32)


def molecules(
    n_atoms: np.ndarray, rng: np.random.Generator, *, with_dipoles: bool = True
) -> Iterator[dict[str, np.ndarray]]:
    """Yield unpadded molecules: Z int32 (n,), R float32 (n,3) Å, F float32 (n,3) eV/Å,
    E float64 eV, Qtot float64 e, D float64 (3,) e·Å."""
    for n in n_atoms:
        n = int(n)
        side = int(np.ceil(n ** (1 / 3)))
        grid = np.stack(
            np.meshgrid(*(np.arange(side),) * 3, indexing="ij"), -1
        ).reshape(-1, 3)
        pick = rng.choice(len(grid), size=n, replace=False)
        R = grid[pick] * 1.5 + rng.uniform(-0.15, 0.15, size=(n, 3))
        Z = rng.choice(ELEMENTS, size=n, p=ELEMENT_P).astype(np.int32)
        E = sum(ELEMENT_ENERGY[int(z)] for z in Z) + rng.normal(0.0, 0.5)
        F = rng.normal(0.0, 1.0, size=(n, 3))
        F -= F.mean(0)
        mol = {
            "Z": Z,
            "R": R.astype(np.float32),
            "F": F.astype(np.float32),
            "E": np.float64(E),
            "Qtot": np.float64(0.0),
        }
        if with_dipoles:
            mol["D"] = rng.normal(0.0, 0.3, size=3)
        yield mol


def _npy_member(zf: zipfile.ZipFile, name: str, dtype, shape, chunks) -> None:
    """Write one .npy member from an iterator of array chunks (streamed)."""
    with zf.open(name + ".npy", "w", force_zip64=True) as fh:
        header = io.BytesIO()
        npformat.write_array_header_1_0(
            header,
            {
                "descr": np.dtype(dtype).str,
                "fortran_order": False,
                "shape": tuple(shape),
            },
        )
        fh.write(header.getvalue())
        for chunk in chunks:
            fh.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())


def write_padded_npz(
    path: str | os.PathLike,
    n_mol: int,
    *,
    seed: int = 0,
    amax: int | None = None,
    with_forces: bool = True,
    with_dipoles: bool = True,
    compress: bool = False,
    chunk: int = 4096,
) -> Path:
    """Write a padded NPZ of ``n_mol`` synthetic molecules, streaming, chunk by chunk.

    Keys: ``R`` float32 (n, Amax, 3) Å, ``Z`` int32 (n, Amax), ``N`` int32 (n,),
    ``E`` float64 (n,) eV, ``F`` float32 (n, Amax, 3) eV/Å, ``Q`` float64 (n,) e,
    ``D`` float64 (n, 3) e·Å. The same seed gives the same molecules in every key.
    """
    path = Path(path)
    sizes = qm9_like_sizes(n_mol, np.random.default_rng(seed))
    amax = int(amax or sizes.max())

    def padded(key: str) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed + 1)
        for start in range(0, n_mol, chunk):
            part = sizes[start : start + chunk]
            mols = list(molecules(part, rng, with_dipoles=with_dipoles))
            if key in ("R", "F"):
                out = np.zeros((len(part), amax, 3), np.float32)
            elif key == "Z":
                out = np.zeros((len(part), amax), np.int32)
            elif key == "D":
                out = np.zeros((len(part), 3))
            else:
                out = np.zeros(len(part))
            for j, m in enumerate(mols):
                n = len(m["Z"])
                if key in ("R", "F", "Z"):
                    out[j, :n] = m[key]
                else:
                    out[j] = m["Qtot" if key == "Q" else key]
            yield out

    keys = {
        "R": ("<f4", (n_mol, amax, 3)),
        "Z": ("<i4", (n_mol, amax)),
        "E": ("<f8", (n_mol,)),
        "Q": ("<f8", (n_mol,)),
    }
    if with_forces:
        keys["F"] = ("<f4", (n_mol, amax, 3))
    if with_dipoles:
        keys["D"] = ("<f8", (n_mol, 3))
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=mode, allowZip64=True) as zf:
        _npy_member(zf, "N", "<i4", (n_mol,), [sizes])
        for key, (dtype, shape) in keys.items():
            _npy_member(zf, key, dtype, shape, padded(key))
    return path


def write_legacy_packed(
    path: str | os.PathLike,
    n_mol: int,
    *,
    seed: int = 0,
    energy_unit: str = "eV",
    with_forces: bool = True,
    with_charges: bool = True,
) -> Path:
    """A packed directory as the older packed-memmap tooling wrote it: the same raw
    files, ``offsets.npy`` and ``n_atoms.npy``, no ``manifest.json``, no dipoles.

    The older converter converts nothing: values are stored in the units of its
    input. Here energies are written in ``energy_unit`` and forces in
    ``energy_unit``/Å (the molecules of :func:`molecules`, converted from eV);
    without ``with_forces`` the forces file is zero-filled, as that converter wrote
    it for data without forces; without ``with_charges`` there is no ``Qtot.f64``.
    """
    from physpack.units import energy_factor

    path = Path(path)
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    sizes = qm9_like_sizes(n_mol, rng)
    mols = list(molecules(sizes, rng, with_dipoles=False))
    per_ev = 1.0 / energy_factor(energy_unit)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    np.save(path / "offsets.npy", offsets)
    np.save(path / "n_atoms.npy", sizes.astype(np.int32))
    cat = lambda k: np.concatenate([m[k] for m in mols]).astype(np.float64)
    np.concatenate([m["Z"] for m in mols]).astype("<i4").tofile(path / "Z_pack.int32")
    cat("R").astype("<f4").tofile(path / "R_pack.f32")
    forces = cat("F") * per_ev if with_forces else np.zeros((int(offsets[-1]), 3))
    forces.astype("<f4").tofile(path / "F_pack.f32")
    (np.array([m["E"] for m in mols]) * per_ev).astype("<f8").tofile(path / "E.f64")
    if with_charges:
        np.array([m["Qtot"] for m in mols], "<f8").tofile(path / "Qtot.f64")
    return path
