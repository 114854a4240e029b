"""physpack.metrics: errors from sums, per element, names with units, committees;
every value against a direct numpy computation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units as ase_units
from physpack import metrics
from physpack.training.history import HISTORY_COLUMNS
from physpack.units import CANONICAL_UNITS


def test_mae_rmse_equal_numpy():
    rng = np.random.default_rng(0)
    err = rng.normal(0, 2.0, (17, 3))
    mae, rmse = metrics.mae_rmse(err)
    assert mae == pytest.approx(np.mean(np.abs(err)))
    assert rmse == pytest.approx(np.sqrt(np.mean(err**2)))
    assert all(math.isnan(v) for v in metrics.mae_rmse(np.zeros((0, 3))))
    assert metrics.mae_rmse([3, -4]) == pytest.approx((3.5, math.sqrt(12.5)))


def test_sums_of_batches_give_the_whole_set():
    rng = np.random.default_rng(1)
    err = rng.normal(0, 1.0, 101)
    parts = [metrics.error_sums(b) for b in np.array_split(err, 7)]
    total = metrics.add_sums(parts)
    whole = metrics.error_sums(err)
    assert total.count == 101
    assert (total.mae, total.rmse) == pytest.approx((whole.mae, whole.rmse))
    assert (total.mae, total.rmse) == pytest.approx(metrics.mae_rmse(err))
    # the mean of the batches' MAEs is not the MAE of the set: sums are needed
    assert np.mean([p.mae for p in parts]) != pytest.approx(total.mae, rel=1e-9)


def test_mask_leaves_padding_out_also_nan():
    err = np.array([[1.0, -2.0, 3.0], [np.nan, 5.0, 1e9]])
    s = metrics.error_sums(err, np.array([True, False])[:, None])
    assert (float(s.abs), float(s.sq), float(s.count)) == (6.0, 14.0, 3.0)


def test_jax_arrays_inside_jit_give_the_numpy_sums():
    rng = np.random.default_rng(2)
    err = rng.normal(0, 1.0, (9, 3)).astype(np.float32)
    mask = rng.random(9) > 0.3

    @jax.jit
    def sums(e, m):
        return metrics.error_sums(e, m[:, None])

    got = sums(jnp.asarray(err), jnp.asarray(mask))
    assert isinstance(got.abs, jax.Array) and got.abs.dtype == jnp.float32
    sel = err[mask]
    assert float(got.abs) == pytest.approx(np.abs(sel).sum(), rel=1e-6)
    assert float(got.sq) == pytest.approx((sel**2).sum(), rel=1e-6)
    assert float(got.count) == sel.size
    # a pytree: summed over devices like any other
    summed = jax.tree.map(lambda a, b: a + b, got, got)
    assert float(summed.count) == 2 * sel.size


def test_flat_sums_round_trip_and_monitored_names():
    rng = np.random.default_rng(3)
    errors = {
        "energy": rng.normal(size=5),
        "energy_per_atom": rng.normal(size=5),
        "forces": rng.normal(size=(12, 3)),
    }
    sums = {q: metrics.error_sums(e) for q, e in errors.items()}
    flat = metrics.flatten_sums(sums)
    assert set(flat) == {f"{q}_{f}" for q in errors for f in ("abs", "sq", "count")}
    assert metrics.unflatten_sums(flat) == sums
    m = metrics.monitored_metrics(sums, prefix="valid_")
    assert list(m) == [
        "valid_energy_mae_eV",
        "valid_energy_rmse_eV",
        "valid_energy_mae_eV_per_atom",
        "valid_energy_rmse_eV_per_atom",
        "valid_forces_mae_eV_per_A",
        "valid_forces_rmse_eV_per_A",
    ]
    assert m["valid_forces_rmse_eV_per_A"] == pytest.approx(
        np.sqrt(np.mean(errors["forces"] ** 2))
    )
    assert m["valid_energy_mae_eV_per_atom"] == pytest.approx(
        np.mean(np.abs(errors["energy_per_atom"]))
    )


def test_names_are_the_history_columns():
    names = [spec.name("valid_") for spec in metrics.MONITORED]
    assert [c for c in HISTORY_COLUMNS if c in names] == names
    assert len(names) == 8
    assert metrics.metric_name("energy", "mae", "meV") == "energy_mae_meV"
    assert (
        metrics.metric_name("energy_per_atom", "mae", "meV/atom")
        == "energy_mae_meV_per_atom"
    )
    assert metrics.metric_name("forces", "mae", "meV/Å") == "forces_mae_meV_per_A"
    with pytest.raises(KeyError, match="no unit 'meV'"):
        metrics.metric_name("forces", "mae", "meV")
    with pytest.raises(KeyError, match="statistic"):
        metrics.metric_name("forces", "max")


def test_units_scale_from_the_canonical_unit():
    kcal_mol = ase_units.kcal / ase_units.mol
    assert metrics.in_units(0.5, "energy") == pytest.approx(
        {"eV": 0.5, "meV": 500.0, "kcal/mol": 0.5 / kcal_mol}
    )
    assert list(metrics.in_units(1.0, "energy_per_atom")) == [
        "eV/atom",
        "meV/atom",
        "kcal/mol/atom",
    ]
    assert metrics.in_units(0.02, "forces")["meV/Angstrom"] == pytest.approx(20.0)
    assert metrics.in_units(ase_units.Debye, "dipole")["Debye"] == pytest.approx(1.0)
    for q in ("energy", "forces", "dipole"):
        assert metrics.unit_of(q).label == CANONICAL_UNITS[q]
        assert metrics.unit_of(q).scale == 1.0
    assert metrics.convert(np.array([1.0, 2.0]), "forces", "meV/Å") == pytest.approx(
        [1e3, 2e3]
    )


def test_per_element_equals_numpy_selection():
    rng = np.random.default_rng(4)
    z = rng.choice([1, 6, 8], 30)
    err = rng.normal(size=(30, 3))
    out = metrics.per_element(err, z)
    assert list(out) == ["H", "C", "O"]
    for symbol, number in (("H", 1), ("C", 6), ("O", 8)):
        e = out[symbol]
        assert e.atomic_number == number and e.n_atoms == int((z == number).sum())
        assert e.sums.mae == pytest.approx(np.abs(err[z == number]).mean())
        assert e.sums.count == 3 * e.n_atoms
    # the elements' sums add up to the whole set
    total = metrics.add_sums(e.sums for e in out.values())
    assert total.mae == pytest.approx(np.abs(err).mean())
    with pytest.raises(ValueError, match="numbers"):
        metrics.per_element(err, z[:-1])


def test_committee_mean_and_std_incl_dipoles_and_charges():
    rng = np.random.default_rng(5)
    k, m, a = 4, 3, 8
    members = [
        {
            "energy": rng.normal(size=m),
            "forces": rng.normal(size=(a, 3)),
            "dipole": rng.normal(size=(m, 3)),
            "charges": rng.normal(size=a),
        }
        for _ in range(k)
    ]
    c = metrics.committee(members)
    assert list(c) == ["energy", "forces", "dipole", "charges"]
    for q, comm in c.items():
        stacked = np.stack([mem[q] for mem in members])
        assert comm.members.shape == (k, *stacked.shape[1:])
        np.testing.assert_allclose(comm.mean, stacked.mean(0))
        np.testing.assert_allclose(comm.std, stacked.std(0, ddof=0))
    # a quantity one member lacks is left out; one member has spread 0
    members[1]["dipole"] = None
    assert "dipole" not in metrics.committee(members)
    one = metrics.committee(members[:1])
    np.testing.assert_array_equal(one["charges"].std, np.zeros(a))
    members[2]["forces"] = np.zeros((a + 1, 3))
    with pytest.raises(ValueError, match="forces shapes differ"):
        metrics.committee(members)


def test_the_metrics_module_loads_no_jax():
    import subprocess
    import sys

    code = "import sys, physpack.metrics; assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
