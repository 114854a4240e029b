"""The pure helpers of benchmarks/bench_accuracy.py (no training): per-element
force errors, the datasets and their splits, result paths, the wall budget."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from physpack.config import with_defaults

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "bench_accuracy", ROOT / "benchmarks" / "bench_accuracy.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_element_force_errors_by_hand():
    numbers = np.array([1, 6, 1, 8])
    f_true = np.zeros((4, 3))
    f_pred = np.array(
        [
            [0.003, 0.0, 0.0],  # H: |dF| 3, 0, 0 meV/Å
            [0.0, -0.006, 0.0],  # C: 0, 6, 0
            [0.0, 0.0, 0.009],  # H: 0, 0, 9
            [0.012, 0.012, -0.012],  # O: 12, 12, 12
        ]
    )
    out = bench.element_force_errors(numbers, f_true, f_pred)
    assert list(out) == ["H", "C", "O"]  # by atomic number
    assert out["H"]["forces_mae_meV_per_A"] == pytest.approx((3 + 9) / 6)
    assert out["C"]["forces_mae_meV_per_A"] == pytest.approx(6 / 3)
    assert out["O"]["forces_mae_meV_per_A"] == pytest.approx(12.0)
    assert {k: v["atom_fraction"] for k, v in out.items()} == pytest.approx(
        {"H": 0.5, "C": 0.25, "O": 0.25}
    )
    metrics = bench.error_metrics([1.0], [1.002], [4], f_true, f_pred, numbers)
    assert metrics["per_element"] == out
    assert metrics["forces_mae_meV_per_A"] == pytest.approx((3 + 6 + 9 + 36) / 12)
    assert metrics["energy_mae_meV_per_atom"] == pytest.approx(0.5)
    # per-element errors weighted by atom fraction give the overall error
    overall = sum(v["forces_mae_meV_per_A"] * v["atom_fraction"] for v in out.values())
    assert overall == pytest.approx(metrics["forces_mae_meV_per_A"])
    assert "per_element" not in bench.error_metrics([1.0], [1.0], [4], f_true, f_pred)


def test_dataset_npz_and_split_sections():
    assert bench.dataset_npz("demo") == (ROOT / "data" / "demo.npz").resolve()
    assert bench.dataset_npz("demo", "/x/other.npz") == Path("/x/other.npz")
    assert bench.dataset_npz("transfer", "/x/t.npz") == Path("/x/t.npz")
    with pytest.raises(SystemExit, match="--npz"):
        bench.dataset_npz("transfer")
    config = with_defaults(yaml.safe_load((ROOT / "config.yaml").read_text()))
    demo = bench.split_section(config, "demo")
    transfer = bench.split_section(config, "transfer")
    assert demo == config["split"]
    assert transfer == {**config["split"], "group_by": "formula"}


def test_result_paths_carry_the_dataset(tmp_path):
    demo = bench.result_path(tmp_path, "demo", "mace", 15)
    transfer = bench.result_path(tmp_path, "transfer", "mace", 15)
    assert demo != transfer
    assert demo.parent == bench.dataset_workdir(tmp_path, "demo")
    assert transfer.parent == bench.dataset_workdir(tmp_path, "transfer")
    # the names the table collects from a dataset's folder
    assert transfer.name == "mace-15min.json"
    assert bench.result_path(tmp_path, "demo", "physpack", 0.3, "x").name == (
        "physpack-x-0.3min.json"
    )


def test_fold_unseen_elements_moves_whole_compositions():
    # molecules 0-3 train (H, C), 4-5 valid, 6-8 test; 5 and 7, 8 have F
    present = np.zeros((9, 119), bool)
    present[:, [1, 6]] = True
    present[[5, 7, 8], 9] = True
    subsets = {
        "train": np.arange(4),
        "valid": np.array([4, 5]),
        "test": np.array([6, 7, 8]),
    }
    out, moved = bench.fold_unseen_elements(subsets, present)
    assert moved == 3
    assert out["train"].tolist() == [0, 1, 2, 3, 5, 7, 8]
    assert out["valid"].tolist() == [4] and out["test"].tolist() == [6]
    numbers = np.array([1, 6, 1, 9])
    assert bench.element_presence(numbers, np.array([0, 2, 4]))[
        :, [1, 6, 9]
    ].tolist() == [
        [True, True, False],
        [True, False, True],
    ]


def _formulas(packed, indices) -> set[tuple[int, ...]]:
    from physpack.data.packed import PackedDataset

    data = PackedDataset(packed)
    return {
        tuple(np.bincount(data.molecule(int(i))["Z"], minlength=119)) for i in indices
    }


def test_transfer_split_keeps_compositions_apart(tmp_path):
    """On a tiny subset of the demo data (35 compounds, 34 compositions), the
    transfer dataset's split leaves no test composition in training."""
    demo = np.load(ROOT / "data" / "demo.npz")
    keep = np.concatenate(
        [np.flatnonzero(demo["mol_id"] == m)[:3] for m in range(len(demo["mol_names"]))]
    )
    npz = tmp_path / "tiny.npz"
    np.savez(npz, **{k: demo[k][keep] for k in ("R", "Z", "N", "E", "F", "Q", "D")})
    config = with_defaults(yaml.safe_load((ROOT / "config.yaml").read_text()))
    work = bench.dataset_workdir(tmp_path / "acc", "transfer")
    paths = bench.prepare_data(work, config, "transfer", npz)
    assert json.loads((work / "paths.json").read_text()) == paths
    split = np.load(paths["split"])
    assert str(split["group_by"]) == "formula"
    train = _formulas(paths["packed"], split["train"])
    test = _formulas(paths["packed"], split["test"])
    valid = _formulas(paths["packed"], split["valid"])
    assert test and valid and not (train & test) and not (train & valid)
    n = sum(len(split[k]) for k in ("train", "valid", "test"))
    assert n == keep.size
    assert "sum formula" in paths["split_title"]
    # every test element is a training element
    tested = set(paths["test_elements"])
    trained = {z for f in train for z in np.flatnonzero(f)}
    assert tested <= trained
    for name in ("train", "valid", "test", "md"):
        assert Path(paths[name]).exists()
    # the same folder refuses another NPZ
    with pytest.raises(SystemExit, match="another --workdir"):
        bench.prepare_data(work, config, "transfer", tmp_path / "other.npz")


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_wall_budget_stops_and_flips_inside_an_epoch():
    clock = FakeClock()
    budget = bench.WallBudget(10.0, flip_fraction=0.75, clock=clock)
    seen, flips, waits = [], [], []

    def wait():
        waits.append(clock.t)
        clock.t += 1.0  # each update takes a second

    epoch = range(100)  # one epoch: far longer than the budget
    for batch in budget.batches(epoch, wait=wait, count=lambda b: 2):
        seen.append(batch)
        flips.append(budget.flipped)
    assert seen == list(range(10))  # the 10th update ends at 10 s: stop
    assert budget.stopped and budget.stopped_at == 10.0
    assert budget.steps == 10 and budget.graphs == 20
    assert budget.flipped_at == 8.0  # after the 8th update, from the 9th on
    assert flips == [False] * 8 + [True] * 2
    assert len(waits) == 10  # no wait before the first update
    assert list(budget.batches(epoch, wait=wait)) == []  # no further epoch


def test_wall_budget_makes_one_update_at_least():
    clock = FakeClock()
    budget = bench.WallBudget(1.0, clock=clock)
    clock.t = 5.0  # spent before training (e.g. compilation)
    assert list(budget.batches(range(3))) == [0]
    assert budget.stopped and budget.flip_s is None and not budget.flipped


def test_wall_budget_epochs_end_naturally_within_the_budget():
    clock = FakeClock()
    budget = bench.WallBudget(100.0, clock=clock)
    for _ in range(3):
        assert list(budget.batches(range(4), wait=lambda: None)) == [0, 1, 2, 3]
        assert budget.check()
    assert budget.steps == 12 and not budget.stopped


def test_table_rows_per_element_and_older_results():
    result = {
        "name": "x",
        "energy_mae_meV": 1.0,
        "energy_mae_meV_per_atom": 0.1,
        "forces_mae_meV_per_A": 50.0,
        "per_element": {
            "O": {"forces_mae_meV_per_A": 70.0, "atom_fraction": 0.1},
            "H": {"forces_mae_meV_per_A": 40.0, "atom_fraction": 0.6},
        },
        "epochs": 2.25,  # MACE: a fraction
        "train_wall_s": 90.0,
        "params": 1234,
        "md_stable": 6,
        "md_total": 6,
        "md_ps": 5.0,
    }
    older = {k: v for k, v in result.items() if k not in ("per_element", "epochs")}
    rows = bench.table_rows([result, older])
    labels = [label for label, _ in rows]
    h, o = labels.index("  H (60.0 % of atoms)"), labels.index("  O (10.0 % of atoms)")
    assert h < o  # by atomic number
    cells = {label: (cell(result), cell(older)) for label, cell in rows}
    assert cells["  O (10.0 % of atoms)"] == ("70.0", "-")
    assert cells["epochs"] == ("2.25", "-")
    assert dict(rows)["epochs"]({"epochs": 353}) == "353"  # physpack: whole
    assert cells["training wall [min]"] == ("1.50", "1.50")
    assert cells["parameters"] == ("1,234", "1,234")
    assert cells["MD stable (300 K, NVE)"] == ("6/6 in 5 ps", "6/6 in 5 ps")
    assert cells["best epoch (validation loss)"] == ("-", "-")
    learning = {"best_epoch": 3, "train_loss_end": 0.0912, "valid_loss_end": 0.25}
    assert dict(rows)["best epoch (validation loss)"](learning) == "3"
    assert dict(rows)["train / valid loss, last epoch"](learning) == "0.0912 / 0.25"


def test_learning_curve_from_history_rows():
    rows = [
        {"epoch": str(e), "train_loss": str(t), "valid_loss": str(v)}
        for e, t, v in [(1, 2.0, 1.5), (2, 1.0, 0.5), (3, 0.5, 0.7)]
    ]
    assert bench.learning_curve(rows) == {
        "best_epoch": 2,
        "train_loss_end": 0.5,
        "valid_loss_end": 0.7,
    }
    for row, force in zip(rows, ["0.1", "0.08", "0.075"]):
        row["valid_forces_mae_eV_per_A"] = force  # history.csv's column, eV/Å
    curve = bench.learning_curve(rows)
    assert curve["valid_forces_mae_meV_per_A_by_epoch"] == pytest.approx(
        [100.0, 80.0, 75.0]
    )


def test_table_compares_runs_of_unequal_compute_at_the_same_epoch():
    """A run the host slowed makes fewer epochs in its budget; the table gives
    every run's validation force error at the shortest run's last epoch."""
    long = {"name": "a", "valid_forces_mae_meV_per_A_by_epoch": [90.0, 70.0, 60.0]}
    short = {"name": "b", "valid_forces_mae_meV_per_A_by_epoch": [95.0, 75.0]}
    mace = {"name": "mace"}  # no history of its own
    rows = dict(bench.table_rows([long, short, mace]))
    cell = rows["validation force MAE, epoch 2 [meV/Å]"]
    assert [cell(r) for r in (long, short, mace)] == ["70.0", "75.0", "-"]
    labels = [label for label, _ in bench.table_rows([mace])]
    assert not any(label.startswith("validation force MAE, epoch") for label in labels)


def test_steal_percent_from_proc_stat(tmp_path):
    """The hypervisor's share of the CPU during a run, from /proc/stat's first
    line (user nice system idle iowait irq softirq steal guest guest_nice)."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 0 40 7 0\ncpu0 50 0 25 400 5 0 0 20 0 0\n")
    before = bench.cpu_steal_and_total(stat)
    assert before == (40, 1000)  # guest time is already counted inside user
    stat.write_text("cpu  400 0 100 1100 10 0 0 390 9 0\n")
    after = bench.cpu_steal_and_total(stat)
    assert after == (390, 2000)
    assert bench.steal_percent(before, after) == pytest.approx(35.0)
    assert bench.steal_percent(None, after) is None
    assert bench.steal_percent(after, after) is None
    assert bench.cpu_steal_and_total(tmp_path / "absent") is None
    stat.write_text("cpu  1 2 3 4\n")  # a kernel without the steal column
    assert bench.cpu_steal_and_total(stat) is None
    cell = dict(bench.table_rows([]))["CPU taken by the host (steal) [%]"]
    assert cell({"train_steal_percent": 12.4}) == "12"
    assert cell({}) == "-"  # a result kept by an older version of the script


def test_physpack_runs_train_from_scratch_for_their_own_budget(tmp_path, monkeypatch):
    """A run never continues a state kept in the work directory: training continues
    a finished state whose budget was raised, at its final learning rate, which made
    a 60-minute run the 15-minute run plus 45 minutes at that rate."""
    import physpack.training.train as training

    class Started(Exception):
        pass

    seen = []

    def train(packed, split, output, history, state_dir, *args, **kwargs):
        folder = Path(output).parent
        seen.append((folder, sorted(p.name for p in folder.rglob("*"))))
        # what a finished run leaves behind
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        (Path(state_dir) / "state.msgpack").write_bytes(b"finished")
        Path(output).write_bytes(b"checkpoint")
        raise Started

    monkeypatch.setattr(training, "train", train)
    paths = {"max_z": 16, "packed": str(tmp_path / "packed"), "split": "split.npz"}
    for minutes in (15, 60, 60):
        with pytest.raises(Started):
            bench.run_physpack(paths, tmp_path, minutes, 0.1, [], "")
    (first, *_), (second, *_), (third, *_) = seen
    assert first != second and second == third  # one folder per budget
    assert [files for _, files in seen] == [[], [], []]  # each one emptied first
