"""The structure checks of ``physpack validate`` (errors; the content checks are
skipped when one fails): ``manifest`` readable and its counts those of
``offsets.npy``; ``offsets`` 1-D, from 0, increasing, ``n_atoms.npy`` its
differences; ``files`` present with count × record-size bytes; ``checksum`` the
manifest's sha256 of every file (``checksums: true``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from physpack import config as cfg
from physpack.data.manifest import MANIFEST, read_manifest
from physpack.data.packed_format import (
    ARRAYS,
    N_ATOMS,
    OFFSETS,
    sha256_file,
    size_problem,
)
from physpack.data.progress import Progress
from physpack.data.validation_report import Collector
from physpack.errors import InputError


def check_structure(
    path: Path,
    config: cfg.ValidateConfig,
    require: bool,
    col: Collector,
    summary: dict[str, Any],
    checks: list[str],
    skipped: dict[str, str],
) -> np.ndarray | None:
    """Check the packed directory ``path``'s files (``require``: a missing
    ``manifest.json`` is an error): problems go to ``col``, the counts to
    ``summary``, the checksum check to ``checks`` or ``skipped``.

    Returns:
        the offsets (int64), ``None`` when they are missing or unreadable.
    """
    manifest = _read_manifest(path, col)
    summary["has_manifest"] = (path / MANIFEST).exists()
    if require and not summary["has_manifest"]:
        col.add(
            "manifest",
            f"{path / MANIFEST}: missing, so the files' checksums cannot be verified; "
            "physpack writes one into every directory it converts (deleted?). For a "
            "directory of the older tooling set validate.require_manifest: false",
            file=MANIFEST,
        )
    offsets = _read_offsets(path, col)
    if offsets is not None:
        _check_offsets(path, offsets, col)
        _check_files(path, offsets, manifest, col)
        summary["n_molecules"] = int(offsets.size - 1)
        summary["n_atoms_total"] = int(offsets[-1])
    if manifest is not None and config.checksums:
        checks.append("checksum")
        _check_checksums(path, manifest, col)
    elif config.checksums:
        skipped["checksum"] = "no usable manifest.json"
    else:
        skipped["checksum"] = "disabled (checksums: false)"
    return offsets


def _read_manifest(path: Path, col: Collector) -> dict[str, Any] | None:
    """The checked manifest (:func:`physpack.data.manifest.read_manifest`), or
    ``None`` with a ``manifest`` error when it is unusable."""
    try:
        return read_manifest(path)
    except InputError as exc:
        col.add("manifest", str(exc), file=MANIFEST)
        return None


def _read_offsets(path: Path, col: Collector) -> np.ndarray | None:
    p = path / OFFSETS
    if not p.exists():
        col.add("files", f"{p}: missing file", file=OFFSETS)
        return None
    try:
        offsets = np.load(p, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        col.add("files", f"{p}: unreadable ({exc})", file=OFFSETS)
        return None
    if offsets.ndim != 1 or offsets.size < 1 or offsets.dtype.kind not in "iu":
        col.add(
            "offsets",
            f"{p}: expected a 1-D integer array, got {offsets.dtype} {offsets.shape}",
            file=OFFSETS,
        )
        return None
    return np.asarray(offsets, dtype=np.int64)


def _check_offsets(path: Path, offsets: np.ndarray, col: Collector) -> None:
    if offsets[0] != 0:
        col.add(
            "offsets",
            f"{path / OFFSETS}: offsets[0] = {offsets[0]}, not 0",
            file=OFFSETS,
        )
    sizes = np.diff(offsets)
    neg = np.flatnonzero(sizes < 0)
    col.add_molecules(
        "offsets",
        neg,
        "molecule {0}: offsets not monotonic (offsets[{0}] = {1} > offsets[{2}] = {3})",
        offsets[neg],
        neg + 1,
        offsets[neg + 1],
    )
    empty = np.flatnonzero(sizes == 0)
    col.add_molecules("offsets", empty, "molecule {}: no atoms (empty molecule)")
    if sizes.size == 0:
        col.add("offsets", f"{path}: empty dataset (0 molecules)", file=OFFSETS)
    p = path / N_ATOMS
    if not p.exists():
        return
    try:
        n_atoms = np.load(p, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        col.add("files", f"{p}: unreadable ({exc})", file=N_ATOMS)
        return
    if n_atoms.shape != sizes.shape:
        col.add(
            "offsets",
            f"{p}: shape {n_atoms.shape} but offsets.npy describes {sizes.size} "
            "molecules",
            file=N_ATOMS,
        )
        return
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    wrong = np.flatnonzero(n_atoms != sizes)
    col.add_molecules(
        "offsets",
        wrong,
        "molecule {}: n_atoms.npy says {}, offsets say {}",
        n_atoms[wrong],
        sizes[wrong],
    )


def _check_files(
    path: Path, offsets: np.ndarray, manifest: dict[str, Any] | None, col: Collector
) -> None:
    n_mol, n_atoms = offsets.size - 1, int(offsets[-1])
    listed = (manifest or {}).get("arrays", {})
    if manifest is not None:
        for key, want in (("n_molecules", n_mol), ("n_atoms_total", n_atoms)):
            if key in manifest and manifest[key] != want:
                col.add(
                    "manifest",
                    f"{path / MANIFEST}: {key} = {manifest[key]} but offsets.npy "
                    f"gives {want}",
                    file=MANIFEST,
                )
    for key, spec in ARRAYS.items():
        p = path / spec.file
        if not p.exists():
            if spec.required or key in listed:
                col.add("files", f"{p}: missing file", file=spec.file)
            continue
        problem = size_problem(p, spec, n_mol, n_atoms)
        if problem is not None:
            col.add("files", problem, file=spec.file)
    sized = {s.file for s in ARRAYS.values()}  # already checked against the counts
    for entry in listed.values():
        p = path / str(entry.get("file", ""))
        if p.name in sized:
            continue
        if p.is_file() and "bytes" in entry and p.stat().st_size != entry["bytes"]:
            col.add(
                "files",
                f"{p}: {p.stat().st_size} bytes but the manifest says {entry['bytes']}",
                file=entry["file"],
            )
        elif not p.is_file() and p.name != OFFSETS:  # a missing offsets: reported
            col.add("files", f"{p}: missing file (listed in manifest)", file=p.name)


def _check_checksums(path: Path, manifest: dict[str, Any], col: Collector) -> None:
    entries = [e for e in manifest["arrays"].values() if (path / e["file"]).is_file()]
    megabytes = [math.ceil((path / e["file"]).stat().st_size / 1e6) for e in entries]
    with Progress(sum(megabytes), f"validate {path.name}: sha256", "MB") as bar:
        for entry, size in zip(entries, megabytes):
            p = path / entry["file"]
            want = entry["sha256"]
            got = sha256_file(p)
            bar.update(size)
            if got == want:
                continue
            col.add(
                "checksum",
                f"{p}: sha256 {got[:12]}… differs from the manifest's {want[:12]}…",
                file=entry["file"],
            )
