"""physpack.data.stats: every number checked against a brute-force count on a tiny set."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.data import chemical_symbols
from physpack.config import LoaderConfig
from physpack.data import stats
from physpack.data.packed import PackedWriter
from physpack.data.synthetic import write_legacy_packed

SIZES = [1, 2, 3, 5, 8, 2, 4, 6, 3, 7, 2]
B = 3  # batch size


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, dict[str, list]]:
    """A packed set of 11 hand-sized molecules; returns (path, the molecules)."""
    rng = np.random.default_rng(7)
    mols: dict[str, list] = {"Z": [], "R": [], "F": [], "E": [], "D": []}
    for n in SIZES:
        mols["Z"].append(rng.choice([1, 6, 8, 16], size=n).astype(np.int32))
        mols["R"].append(np.arange(n * 3, dtype=np.float32).reshape(n, 3) * 1.7)
        mols["F"].append(rng.normal(0, 2, size=(n, 3)).astype(np.float32))
        mols["E"].append(-13.0 * n + rng.normal())
        mols["D"].append(rng.normal(size=3))
    path = tmp_path / "tiny"
    with PackedWriter(path, has_forces=True, has_dipoles=True) as w:
        w.append(
            n_atoms=SIZES,
            Z=np.concatenate(mols["Z"]),
            R=np.concatenate(mols["R"]),
            F=np.concatenate(mols["F"]),
            E=np.array(mols["E"]),
            Qtot=np.zeros(len(SIZES)),
            D=np.array(mols["D"]),
        )
    return path, mols


def _brute_dense(width: int) -> tuple[float, float, int]:
    atom_slots = pair_slots = real_atoms = real_pairs = batches = 0
    for a in range(0, len(SIZES), B):
        batches += 1
        for slot in range(B):  # the last batch is padded to B molecules too
            atom_slots += width
            pair_slots += width * (width - 1)
        for n in SIZES[a : a + B]:
            real_atoms += n
            real_pairs += sum(1 for i in range(n) for j in range(n) if i != j)
    return real_atoms / atom_slots, real_pairs / pair_slots, batches


def _brute_bucketed(order: list[int], bucket: int) -> tuple[float, float, int]:
    atom_slots = pair_slots = batches = 0
    for a in range(0, len(order), bucket):
        ordered = sorted(SIZES[i] for i in order[a : a + bucket])
        for b in range(0, len(ordered), B):
            w = max(ordered[b : b + B])
            atom_slots += B * w
            pair_slots += B * w * (w - 1)
            batches += 1
    real_pairs = sum(n * (n - 1) for n in SIZES)
    return sum(SIZES) / atom_slots, real_pairs / pair_slots, batches


def test_numbers_match_brute_force(tiny) -> None:
    path, mols = tiny
    loader = LoaderConfig(batch_size=B, bucket_size=100)
    s = stats.packing_stats(path, loader, atoms_per_chunk=7)  # several chunks
    assert s["n_molecules"] == len(SIZES) and s["n_atoms_total"] == sum(SIZES)
    assert s["size_histogram"] == {str(k): v for k, v in sorted(Counter(SIZES).items())}
    z_all = [int(z) for zs in mols["Z"] for z in zs]
    assert s["element_counts"] == {
        chemical_symbols[z]: c for z, c in Counter(z_all).items()
    }
    e_per_atom = [e / n for e, n in zip(mols["E"], SIZES)]
    assert s["energy_per_atom"]["mean"] == pytest.approx(np.mean(e_per_atom))
    assert s["energy_per_atom"]["unit"] == "eV/atom"
    mags = [float(np.linalg.norm(f)) for fs in mols["F"] for f in fs]
    assert s["force_magnitude"]["exact"]["max"] == pytest.approx(max(mags))
    assert s["force_magnitude"]["exact"]["mean"] == pytest.approx(np.mean(mags))
    assert s["force_magnitude"]["percentiles"]["50"] == pytest.approx(np.median(mags))
    assert sum(s["force_magnitude"]["histogram"]["counts"]) == len(mags)

    width = max(SIZES)
    n = len(SIZES)
    padded = {
        "R": np.zeros((n, width, 3), np.float32),
        "F": np.zeros((n, width, 3), np.float32),
        "Z": np.zeros((n, width), np.int32),
        "N": np.zeros(n, np.int32),
        "E": np.zeros(n),
        "Q": np.zeros(n),
        "D": np.zeros((n, 3)),
    }
    want_padded = sum(a.nbytes for a in padded.values())
    want_packed = sum(p.stat().st_size for p in path.iterdir())
    assert s["bytes"]["padded_MB"] == pytest.approx(want_padded / 1e6)
    assert s["bytes"]["packed_MB"] == pytest.approx(want_packed / 1e6)

    dense = s["padding"]["dense"]
    atom_eff, pair_eff, batches = _brute_dense(width)
    assert (dense["atom_efficiency"], dense["pair_efficiency"], dense["n_batches"]) == (
        pytest.approx(atom_eff),
        pytest.approx(pair_eff),
        batches,
    )
    # one bucket holding everything: batches are runs of the sorted sizes
    bucketed = s["padding"]["bucketed"]
    atom_eff, pair_eff, batches = _brute_bucketed(list(range(n)), 100)
    assert bucketed["atom_efficiency"] == pytest.approx(atom_eff)
    assert bucketed["pair_efficiency"] == pytest.approx(pair_eff)
    assert bucketed["n_batches"] == batches

    packed = s["padding"]["packed"]
    assert packed["source"] == "loader"
    real_pairs = sum(k * (k - 1) for k in SIZES)
    assert packed["atom_efficiency"] == pytest.approx(
        sum(SIZES) / (packed["n_batches"] * packed["details"]["max_atoms"])
    )
    assert packed["pair_efficiency"] == pytest.approx(
        real_pairs / (packed["n_batches"] * packed["details"]["max_pairs"])
    )
    assert 0 < packed["atom_efficiency"] <= 1 and 0 < packed["pair_efficiency"] <= 1


def test_small_buckets_and_fixed_width(tiny) -> None:
    path, _ = tiny
    s = stats.packing_stats(
        path, LoaderConfig(batch_size=B, bucket_size=4, num_atoms=12)
    )
    order = np.random.default_rng(0).permutation(len(SIZES)).tolist()
    atom_eff, pair_eff, batches = _brute_bucketed(order, 4)
    assert s["padding"]["bucketed"]["atom_efficiency"] == pytest.approx(atom_eff)
    assert s["padding"]["bucketed"]["pair_efficiency"] == pytest.approx(pair_eff)
    assert s["padding"]["bucketed"]["n_batches"] == batches
    atom_eff, pair_eff, _ = _brute_dense(12)
    assert s["padding"]["dense"]["atom_efficiency"] == pytest.approx(atom_eff)
    assert s["bytes"]["padded_width"] == 12


def test_directory_without_manifest(tmp_path: Path) -> None:
    old = write_legacy_packed(tmp_path / "old", 30, seed=4)
    sizes = np.diff(np.load(old / "offsets.npy"))
    s = stats.packing_stats(old, LoaderConfig(batch_size=4))
    assert s["n_molecules"] == 30 and s["n_atoms_total"] == int(sizes.sum())
    assert "D" not in s["arrays"]
    assert s["padding"]["dense"]["atom_efficiency"] == pytest.approx(
        sizes.sum() / (8 * 4 * sizes.max())  # 30 molecules: 8 batches of 4 slots
    )


def test_cli_outputs(tiny, tmp_path: Path, capsys) -> None:
    path, _ = tiny
    out = tmp_path / "reports"
    paths = [out / "s.json", out / "s.md", out / "s.png"]
    argv = [str(path), "--json", str(paths[0]), "--markdown", str(paths[1])]
    argv += ["--figure", str(paths[2]), "--config", json.dumps({"batch_size": B})]
    assert stats.main(argv) == 0
    assert "atom efficiency dense" in capsys.readouterr().out
    report = json.loads(paths[0].read_text())
    assert report["batch_size"] == B and set(report["padding"]) == {
        "dense",
        "bucketed",
        "packed",
    }
    md = paths[1].read_text()
    for needle in ("eV/atom", "eV/Angstrom", "MB", "| dense |", "| packed |"):
        assert needle in md
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["s.json", "s.md", "s.png"]


def test_num_atoms_too_small(tiny, tmp_path: Path, capsys) -> None:
    path, _ = tiny
    out = tmp_path / "r"
    argv = [str(path), "--json", str(out / "a.json"), "--markdown", str(out / "a.md")]
    argv += ["--figure", str(out / "a.png"), "--num-atoms", "4"]
    assert stats.main(argv) == 2
    assert "num_atoms = 4" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def _with_one_giant(path: Path, n_small: int = 400, giant: int = 300) -> Path:
    """Many 5–12-atom molecules and one of ``giant`` atoms."""
    rng = np.random.default_rng(3)
    sizes = [*rng.integers(5, 13, size=n_small).tolist(), giant]
    total = int(np.sum(sizes))
    with PackedWriter(path, has_forces=True, has_dipoles=False) as w:
        w.append(
            n_atoms=sizes,
            Z=rng.choice([1, 6, 8], size=total).astype(np.int32),
            R=np.concatenate(  # molecule-like density: ~1.6 Å per atom
                [rng.uniform(0, 1.6 * n ** (1 / 3), size=(n, 3)) for n in sizes]
            ).astype(np.float32),
            F=rng.normal(0, 1, size=(total, 3)).astype(np.float32),
            E=-10.0 * np.asarray(sizes, dtype=np.float64),
            Qtot=np.zeros(len(sizes)),
        )
    return path


def test_giants_get_their_own_budget_by_default(tmp_path: Path) -> None:
    """The schema's default (``auto``) keeps one large molecule from padding every
    batch; with one budget (``null``) the pair efficiency collapses."""
    path = _with_one_giant(tmp_path / "giant")
    assert LoaderConfig().giant_atoms == "auto"
    default = stats.packing_stats(path, LoaderConfig(batch_size=16))
    one_budget = stats.packing_stats(
        path, LoaderConfig(batch_size=16, giant_atoms=None)
    )
    assert default["padding"]["packed"]["pair_efficiency"] > 0.5
    assert one_budget["padding"]["packed"]["pair_efficiency"] < 0.2


def test_the_stage_warns_when_pair_efficiency_is_low(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _with_one_giant(tmp_path / "giant")
    outputs = [
        "--json",
        str(tmp_path / "s.json"),
        "--markdown",
        str(tmp_path / "s.md"),
        "--figure",
        str(tmp_path / "s.png"),
    ]
    common = [str(path), *outputs, "--batch-size", "16"]
    assert stats.main([*common, "--giant-atoms", "null"]) == 0
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("warning:")]
    efficiency = json.loads((tmp_path / "s.json").read_text())["padding"]["packed"]
    assert f"{100 * efficiency['pair_efficiency']:.1f}" in line or "%" in line
    assert "pair slots" in line and "loader.giant_atoms: auto" in line
    assert "(300 atoms)" in line
    assert stats.main(common) == 0
    assert "warning:" not in capsys.readouterr().err
