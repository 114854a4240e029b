"""A sharded dataset through Snakemake: one conversion and one validation job per
shard, the shards read as one dataset by every later stage, and a shard added later
converted and validated alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import make_workdir, snakemake
from physpack.data.descriptor import open_dataset
from physpack.data.synthetic import write_padded_npz
from test_workflow import planned_jobs

#: end-to-end runs (minutes): outside the quick loop (-m 'not slow')
pytestmark = pytest.mark.slow

DATA_TARGETS = (
    "results/data/validation.json",
    "results/reports/packing_stats.json",
    "results/data/split.npz",
)


def test_shards_convert_in_their_own_jobs_and_train_as_one_dataset(tmp_path):
    workdir = make_workdir(tmp_path / "wf")
    shards = workdir / "data" / "shards"
    shards.mkdir()
    for k, n in enumerate((30, 24)):
        write_padded_npz(shards / f"part{k}.npz", n, seed=20 + k)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["data"]["npz"] = "data/shards/*.npz"
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))

    jobs = planned_jobs(workdir, *DATA_TARGETS)
    assert jobs.count("convert_shard") == 2 and jobs.count("validate_shard") == 2
    assert "convert_npz" not in jobs
    snakemake(workdir, "--cores", "2", "results/eval/metrics.json")

    dataset = workdir / "results" / "data" / "dataset.json"
    ds = open_dataset(dataset)
    assert ds.n_molecules == 54 and len(ds.shards) == 2
    report = json.loads((workdir / "results/data/validation.json").read_text())
    assert report["ok"] and report["summary"]["n_molecules"] == 54
    split = np.load(workdir / "results/data/split.npz")
    everything = np.concatenate([split[k] for k in ("train", "valid", "test")])
    assert sorted(everything.tolist()) == list(range(54))
    # molecules of both shards are in training
    assert (split["train"] < 30).any() and (split["train"] >= 30).any()
    metrics = json.loads((workdir / "results/eval/metrics.json").read_text())
    assert metrics["splits"]["test"]["n_molecules"] == split["test"].size

    # a third shard: only it is converted and validated; the rest follows
    write_padded_npz(shards / "part2.npz", 18, seed=22)
    jobs = planned_jobs(workdir, *DATA_TARGETS)
    assert jobs.count("convert_shard") == 1 and jobs.count("validate_shard") == 1
    assert {"describe_shards", "validate_packed", "split_dataset"} <= set(jobs)
    snakemake(workdir, "--cores", "2", *DATA_TARGETS)
    assert open_dataset(dataset).n_molecules == 72
    log = workdir / "results/logs/convert_shard_part2.log"
    assert log.exists()
