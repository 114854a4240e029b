"""Reference energies: the least-squares fit, its rank-deficient case (one
composition, as in MD17), and user-given per-element energies."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import write_toy
from physpack.config import TrainConfig
from physpack.data.loader import PackedMemmapLoader
from physpack.data.packed import PackedWriter
from physpack.errors import ConfigError, InputError
from physpack.training.reference import (
    RankDeficientWarning,
    energy_constants_for,
    fit_energy_constants,
    given_reference_energies,
)
from physpack.units import ENERGY_TO_EV


def write_water(root: Path, n_mol: int = 12) -> Path:
    """``n_mol`` conformations of one molecule, H2O: a single composition."""
    rng = np.random.default_rng(0)
    packed = root / "water"
    with PackedWriter(packed, has_forces=True, has_dipoles=False) as w:
        for _ in range(n_mol):
            R = np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]) + rng.normal(
                0, 0.03, (3, 3)
            )
            w.append(
                np.array([3]),
                Z=np.array([8, 1, 1], np.int32),
                R=R.astype(np.float32),
                F=rng.normal(0, 0.1, (3, 3)).astype(np.float32),
                E=np.array([-2041.0 - 2 * 13.6 + rng.normal(0, 0.05)]),
                Qtot=np.zeros(1),
            )
    return packed


def test_one_composition_warns_and_given_energies_are_used(tmp_path):
    loader = PackedMemmapLoader(write_water(tmp_path), 4, shuffle=False)
    with pytest.warns(RankDeficientWarning, match="rank 1 for 2 elements"):
        _, stats = fit_energy_constants(loader, 9)
    assert stats["composition_rank"] == 1.0
    given = {1: -13.6, 8: -2041.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        constants, _ = fit_energy_constants(loader, 9, given)
    assert constants.reference_energies[[1, 8]].tolist() == [-13.6, -2041.0]
    assert constants.elements == (1, 8)
    with pytest.raises(InputError, match="no value for O"):
        fit_energy_constants(loader, 9, {1: -13.6})


def test_varied_compositions_fit_without_a_warning(tmp_path):
    packed, _ = write_toy(tmp_path, n_mol=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, stats = fit_energy_constants(PackedMemmapLoader(packed, 8), 9)
    assert stats["composition_rank"] == stats["n_elements"] == 5.0


def test_reference_energies_from_the_config(tmp_path):
    cfg = TrainConfig(
        reference_energies={"H": -313.0, "O": -47000.0},
        reference_energy_unit="kcal/mol",
    )
    got = given_reference_energies(cfg)
    assert got == pytest.approx(
        {1: -313.0 * ENERGY_TO_EV["kcal/mol"], 8: -47000.0 * ENERGY_TO_EV["kcal/mol"]}
    )
    assert given_reference_energies(TrainConfig()) is None
    with pytest.raises(ConfigError, match="'Xx' is not an element"):
        given_reference_energies(dataclasses.replace(cfg, reference_energies={"Xx": 1}))
    loader = PackedMemmapLoader(write_water(tmp_path), 4, shuffle=False)
    constants, stats = energy_constants_for(
        loader, 9, dataclasses.replace(cfg, reference_energy_unit="eV"), log=print
    )
    assert stats["reference_energies"] == {"H": -313.0, "O": -47000.0}
    assert constants.reference_energies[8] == -47000.0


def test_the_data_stages_do_not_load_jax():
    """Validation fits reference energies without importing the model or JAX
    (a JAX-free stage; editing the model must not make it stale)."""
    import subprocess
    import sys

    code = (
        "import sys, physpack.data.validate, physpack.data.stats, "
        "physpack.data.split, physpack.data.convert; "
        "print(sorted(m for m in ('jax', 'flax', 'e3x', 'physpack.model') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
