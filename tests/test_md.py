"""``physpack md``: many molecules side by side, against ASE's integrator, energy
conservation, the Langevin temperature, stability, committee spread, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.io import read, write
from ase.md.verlet import VelocityVerlet
from model_fixtures import make_checkpoint, make_packed
from physpack.data.packed import PackedDataset
from physpack.errors import ConfigError
from physpack.model.calculator import PhysNetCalculator
from physpack.simulation import md
from physpack.simulation.md import MDSettings, run_md
from physpack.simulation.stability import BROKEN_STRETCH, Bonds
from physpack.simulation.velocities import starting_velocities


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three checkpoints of a tiny model (smooth, non-trivial forces) and the
    smallest molecules of their data."""
    root = tmp_path_factory.mktemp("md")
    packed, _ = make_packed(root, n_mol=24)
    ds = PackedDataset(packed)
    order = np.argsort(ds.n_atoms, kind="stable")
    molecules = []
    for i in order[:4]:
        mol = ds.molecule(int(i))
        molecules.append(Atoms(numbers=mol["Z"], positions=mol["R"].astype(np.float64)))
    paths = []
    for seed in range(3):
        paths.append(root / f"m{seed}.ckpt")
        make_checkpoint(paths[-1], packed, seed=seed, scale_factor=30.0)
    broken, gentle = root / "broken.ckpt", root / "gentle.ckpt"
    make_checkpoint(broken, packed, seed=0, scale_factor=3e4)
    make_checkpoint(gentle, packed, seed=0, scale_factor=1e-3)
    return {
        "root": root,
        "molecules": molecules,
        "models": paths,
        "broken": broken,
        "gentle": gentle,
    }


def frames(directory: Path, k: int) -> list[Atoms]:
    (path,) = directory.glob(f"mol{k}_*.extxyz")
    return read(path, index=":")


def test_nve_follows_ase_velocity_verlet_step_for_step(data: dict, tmp_path) -> None:
    """The same molecule, model, starting velocities and time step: positions and
    energies agree with ASE's VelocityVerlet and the PhysNetCalculator to float32
    precision over the first 60 steps."""
    settings = MDSettings(picoseconds=0.03, timestep_fs=0.5, interval=10)
    atoms = data["molecules"][0]
    run_md([data["models"][0]], [atoms], settings, tmp_path / "out")
    ours = frames(tmp_path / "out", 0)
    assert [f.info["step"] for f in ours] == list(range(0, 61, 10))

    reference = atoms.copy()
    reference.calc = PhysNetCalculator(data["models"][0])
    reference.set_velocities(
        starting_velocities(atoms, 300.0, np.random.default_rng([0, 0]))
    )
    dyn = VelocityVerlet(reference, timestep=0.5 * units.fs)
    for frame in ours:
        if frame.info["step"]:
            dyn.run(10)
        np.testing.assert_allclose(frame.positions, reference.positions, atol=2e-5)
        np.testing.assert_allclose(
            frame.get_velocities(), reference.get_velocities(), atol=2e-5
        )
        np.testing.assert_allclose(
            frame.get_potential_energy(), reference.get_potential_energy(), atol=2e-4
        )
        np.testing.assert_allclose(
            frame.info["kinetic_energy_eV"], reference.get_kinetic_energy(), rtol=1e-4
        )
    assert np.abs(ours[-1].positions - ours[0].positions).max() > 1e-3  # it moved


def test_nve_conserves_energy_and_reports_drift(data: dict, tmp_path) -> None:
    settings = MDSettings(picoseconds=0.05, timestep_fs=0.25, interval=20)
    record = run_md(
        [data["models"][0]], data["molecules"][:2], settings, tmp_path / "o"
    )
    kT = units.kB * 300.0
    for k, mol in enumerate(record["molecules"]):
        totals = np.array(
            [f.info["total_energy_eV"] for f in frames(tmp_path / "o", k)]
        )
        kinetic = np.array(
            [f.info["kinetic_energy_eV"] for f in frames(tmp_path / "o", k)]
        )
        assert (
            kinetic.std() > 0.02 * kT * mol["n_atoms"]
        )  # energy sloshes between terms
        assert np.abs(totals - totals[0]).max() / mol["n_atoms"] < 1e-3 * kT * 40
        assert mol["stable"] and abs(mol["energy_drift_meV_per_atom_ps"]) < 1.0
    assert record["stable"] == 2
    assert json.loads((tmp_path / "o" / "md.json").read_text()) == record


def test_a_molecule_alone_and_among_others_follows_the_same_path(
    data: dict, tmp_path
) -> None:
    settings = MDSettings(picoseconds=0.05, interval=20)
    molecules = data["molecules"]
    run_md([data["models"][0]], molecules[:1], settings, tmp_path / "alone")
    run_md([data["models"][0]], molecules, settings, tmp_path / "batch")
    alone, batch = frames(tmp_path / "alone", 0), frames(tmp_path / "batch", 0)
    assert len(alone) == len(batch) == 6
    for a, b in zip(alone, batch, strict=True):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-5)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-4)


def test_baoab_samples_the_bath_temperature() -> None:
    """4,096 independent 3-D harmonic oscillators (period 20 fs) at 500 K from rest:
    after equilibration the position variance is kT/k (BAOAB's configurational
    sampling of a harmonic potential is exact) and the mean kinetic energy
    3/2 kT (1 − (ω dt / 2)²), BAOAB's known kinetic bias at whole steps (0.6 %
    here), within four standard errors; a 1 % error in either would fail."""
    import jax
    import jax.numpy as jnp
    from physpack.simulation.integrators import MDState, baoab

    n, mass, kT, dt = 4096, 12.0, units.kB * 500.0, 0.5 * units.fs
    omega = 2 * np.pi / (20 * units.fs)
    k = mass * omega**2
    inv_mass = jnp.full((n, 1), 1.0 / mass, jnp.float32)
    move = jnp.ones((n, 1), bool)

    def force_fn(r):
        return -k * r, {}

    @jax.jit
    def run(state):
        def one(_, carry):
            state, sums = carry
            state, _ = baoab(
                state, force_fn, inv_mass, move, 0.5 * units.fs, kT, 0.2 / units.fs
            )
            kinetic = 0.5 * mass * jnp.sum(state.velocities**2, axis=1)
            return state, (
                sums[0] + kinetic,
                sums[1] + jnp.sum(state.positions**2, axis=1),
            )

        zeros = jnp.zeros(n)
        state, _ = jax.lax.fori_loop(
            0, 400, one, (state, (zeros, zeros))
        )  # equilibrate
        return jax.lax.fori_loop(0, 4000, one, (state, (zeros, zeros)))

    start = MDState(
        jnp.zeros((n, 3)), jnp.zeros((n, 3)), jnp.zeros((n, 3)), jax.random.PRNGKey(0)
    )
    _, (kinetic, square) = run(start)
    kinetic, variance = np.asarray(kinetic) / 4000, np.asarray(square) / 4000 / 3
    kinetic_target = 1.5 * kT * (1 - (omega * dt / 2) ** 2)
    for value, target in ((kinetic, kinetic_target), (variance, kT / k)):
        error = value.std(ddof=1) / np.sqrt(n)  # particles are independent
        assert error < 0.01 * target  # the test can tell 1 % off
        assert abs(value.mean() - target) < 4 * error


def test_a_stable_model_passes_and_a_broken_model_is_flagged(
    data: dict, tmp_path
) -> None:
    """A gentle run (50 K, 50 fs, weak forces: atoms move < 0.2 Å) holds together;
    the same run with forces 10⁷× stronger tears the molecules apart, and each is
    reported with the time and reason, its last frame the breaking one."""
    settings = MDSettings(temperature_K=50.0, picoseconds=0.05, interval=20)
    good = run_md([data["gentle"]], data["molecules"], settings, tmp_path / "g")
    assert good["stable"] == 4, good["molecules"]
    bad = run_md([data["broken"]], data["molecules"], settings, tmp_path / "b")
    broken = [m for m in bad["molecules"] if not m["stable"]]
    assert broken, "forces 1000x too strong should tear the molecules apart"
    for m in broken:
        assert m["broke_at_ps"] <= settings.picoseconds
        assert any(
            word in m["reason"] for word in ("stretched", "came within", "non-finite")
        )
        last = frames(tmp_path / "b", m["index"])[-1]
        assert last.info["time_ps"] == m["broke_at_ps"]  # the breaking frame is kept


def test_bonds_criterion() -> None:
    atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    bonds = Bonds.of(atoms.numbers, atoms.positions)
    assert sorted(zip(bonds.i, bonds.j, strict=True)) == [(0, 1), (0, 2)]
    assert bonds.broken(atoms.positions) is None
    stretched = atoms.positions.copy()
    stretched[1, 0] = 0.96 * (BROKEN_STRETCH + 0.01)
    assert "bond 0-1 stretched" in bonds.broken(stretched)
    assert bonds.max_stretch(stretched) == pytest.approx(BROKEN_STRETCH + 0.01)
    close = atoms.positions.copy()
    close[2] = close[1] + [0.0, 0.1, 0.0]  # the two H (not bonded) nearly on top
    assert "atoms 1 and 2 (not bonded)" in bonds.broken(close)
    assert "non-finite" in bonds.broken(atoms.positions, energy=np.nan)
    lenient = Bonds.of(
        atoms.numbers, atoms.positions, broken_stretch=2.0, clash_factor=0.1
    )
    assert lenient.broken(stretched) is None and lenient.broken(close) is None


def test_committee_spread_and_uncertain_frames(data: dict, tmp_path) -> None:
    """The frame's spread is √(mean over members of |F_k − F̄|²) per atom, from
    each member alone; frames above the threshold go to uncertain.extxyz."""
    atoms = data["molecules"][1]
    members = []
    for path in data["models"]:
        a = atoms.copy()
        a.calc = PhysNetCalculator(path)
        members.append(a.get_forces())
    members = np.stack(members)
    spread = np.sqrt(((members - members.mean(0)) ** 2).sum(-1).mean(0))
    settings = MDSettings(
        picoseconds=0.01, interval=10, uncertainty_threshold=0.5 * spread.max()
    )
    record = run_md(data["models"], [atoms], settings, tmp_path / "c")
    first = frames(tmp_path / "c", 0)[0]
    assert first.info["forces_spread_max_eV_per_A"] == pytest.approx(
        spread.max(), rel=1e-4
    )
    assert first.info["forces_spread_mean_eV_per_A"] == pytest.approx(
        spread.mean(), rel=1e-4
    )
    np.testing.assert_allclose(first.get_forces(), members.mean(0), atol=1e-5)
    uncertain = read(tmp_path / "c" / "uncertain.extxyz", index=":")
    assert len(uncertain) == record["molecules"][0]["uncertain_frames"] >= 1
    assert uncertain[0].info["molecule"] == 0
    calm = MDSettings(picoseconds=0.01, interval=10, uncertainty_threshold=1e6)
    run_md(data["models"], [atoms], calm, tmp_path / "calm")
    assert not (tmp_path / "calm" / "uncertain.extxyz").exists()


def test_cli_writes_readable_trajectories(data: dict, tmp_path) -> None:
    structures = tmp_path / "start.extxyz"
    write(structures, data["molecules"][:2])
    out = tmp_path / "run"
    code = md.main(
        [
            str(data["models"][0]),
            "--structures",
            str(structures),
            "--ps",
            "0.02",
            "--interval",
            "20",
            "--output",
            str(out),
            "--ensemble",
            "langevin",
        ]
    )
    assert code == 0
    record = json.loads((out / "md.json").read_text())
    assert record["settings"]["ensemble"] == "langevin"
    assert [m["frames"] for m in record["molecules"]] == [3, 3]
    frame = frames(out, 1)[-1]
    assert frame.info["time_ps"] == pytest.approx(0.02)
    assert frame.get_forces().shape == (len(data["molecules"][1]), 3)
    assert set(frame.info) >= {
        "potential_energy_eV",
        "temperature_K",
        "total_energy_eV",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("element", "never seen in training"),
        ("periodic", "periodic"),
        ("timestep", "timestep_fs out of range"),
        ("threshold", "needs a committee"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    data: dict, tmp_path, capsys, change: str, message: str
) -> None:
    atoms = data["molecules"][0].copy()
    args = ["--ps", "0.01"]
    if change == "element":
        atoms.numbers[0] = 17
    if change == "periodic":
        atoms.cell = [10, 10, 10]
        atoms.pbc = True
    if change == "timestep":
        args = ["--timestep", "0"]
    if change == "threshold":
        args += ["--uncertainty-threshold", "0.1"]
    structures = tmp_path / "start.extxyz"
    write(structures, atoms)
    out = tmp_path / "run"
    code = md.main(
        [
            str(data["models"][0]),
            "--structures",
            str(structures),
            "--output",
            str(out),
            *args,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert (
        len(err) == 1 and message in err[0] and err[0].startswith("physpack md: error")
    )
    assert not out.exists() and list(tmp_path.glob(".run*")) == []


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="ensemble"):
        MDSettings(ensemble="nvt")
    with pytest.raises(ConfigError, match="clash_factor"):
        MDSettings(clash_factor=1.2)
    with pytest.raises(ConfigError, match="picoseconds"):
        MDSettings(picoseconds=-1)
    assert MDSettings(interval=100).block_steps == 50
    assert MDSettings(interval=7).block_steps == 7
    assert MDSettings(picoseconds=0.01, timestep_fs=0.5, interval=7).steps == 21
