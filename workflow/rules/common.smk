import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The workflow's own files (package, schema, envs, report) are found from this file,
# not from the working directory: one copy of the workflow serves any number of
# project directories (`snakemake -s /path/to/Snakefile --directory myproject`).
WORKFLOW_ROOT = Path(workflow.current_basedir.get_path_or_uri(secret_free=True))
WORKFLOW_ROOT = WORKFLOW_ROOT.resolve().parents[1]
SOURCE = WORKFLOW_ROOT / "workflow"

# The stages run the package from the workflow source, the code that the rules
# declare as inputs (also in a conda environment, which holds only the third-party
# dependencies). The same package checks the configuration here.
sys.path.insert(0, str(SOURCE))
from physpack.config import (
    DataConfig,
    MDConfig,
    check_input_paths,
    check_workflow_config,
    section_from_mapping,
    shard_name,
)
from physpack.data.descriptor import data_source as check_data_source
from physpack.errors import ConfigError, PhyspackError
from physpack.sources import stage_files

shell.prefix(
    "set -euo pipefail; export PYTHONPATH="
    + shlex.quote(str(SOURCE))
    + "${{PYTHONPATH:+:$PYTHONPATH}}; "
)

# Nested `--config section='{...}'` values arrive as strings: those of the command
# line only (config_settings.config; overwrite_config also holds the --configfile
# files) are coerced first, so that a config file is checked as written, however it
# is given. A bad key or value, or a missing input, stops the run with one line
# naming it and the file that set it.
try:
    check_workflow_config(config, workflow.config_settings.config, workflow.configfiles)
    validate(config, schema=str(SOURCE / "schemas" / "config.schema.yaml"))
    check_input_paths(config["data"], os.getcwd())
except ConfigError as exc:
    raise WorkflowError(f"config: {exc}") from None


# Every path of the pipeline, in one place.
PATHS = {
    "packed": "results/data/packed",
    "validation": "results/data/validation.json",
    "split": "results/data/split.npz",
    "stats_json": "results/reports/packing_stats.json",
    "stats_md": "results/reports/packing_stats.md",
    "stats_png": "results/reports/packing_stats.png",
    "best": "results/model/best.ckpt",
    "history": "results/model/history.csv",
    "state": "results/model/state",
    "metrics": "results/eval/metrics.json",
    "metrics_md": "results/eval/metrics.md",
    "metrics_html": "results/eval/metrics.html",
    "predictions": "results/eval/predictions.npz",
    "figures": "results/eval/figures",
    "logs": "results/logs",
    "benchmarks": "results/benchmarks",
    "data_report": "results/reports/data.html",
}


def data_source():
    """``("npz", path)`` or ``("packed", path)`` from the data section; stops the run
    before anything runs unless it names one usable input
    (physpack.data.descriptor.data_source says which)."""
    try:
        return check_data_source(
            section_from_mapping(DataConfig, config["data"], "data")
        )
    except PhyspackError as exc:
        raise WorkflowError(f"config: {exc}") from None


# The dataset every later stage reads: the directory converted from data.npz; the
# descriptor of its shards (a list or glob of NPZ files, each converted by its own
# job); or a descriptor of the data.packed directory and its units (that directory
# is read in place, never copied or written into).
PATHS["descriptor"] = "results/data/dataset.json"
PATHS["shard"] = "results/data/shards/{shard}"
PATHS["shard_validation"] = "results/data/validation/{shard}.json"


def npz_shards():
    """``{shard name: NPZ file}`` of a sharded ``data.npz`` (a list or a glob), in
    dataset order; empty for one NPZ or a packed directory."""
    data = DataConfig(npz=config["data"].get("npz"))
    if data.npz is None or not data.sharded:
        return {}
    try:
        files = data.npz_files(os.getcwd())
    except ConfigError as exc:
        raise WorkflowError(f"config: {exc}") from None
    return {shard_name(f): f for f in files}


SHARDS = npz_shards()
PATHS["dataset"] = (
    PATHS["descriptor"] if data_source()[0] == "packed" or SHARDS else PATHS["packed"]
)


def shard_data_section(wildcards):
    """The data section of one shard's conversion: ``npz`` is that shard's file,
    so adding a shard leaves the other shards' jobs as they are."""
    data = {**config.get("data", {}), "npz": SHARDS[wildcards.shard]}
    return json.dumps(data, sort_keys=True)


def workflow_file(relative):
    """A file of the workflow source (``workflow/...``), as an input of a rule:
    relative to the working directory if the workflow lies inside it (a checkout
    used as the project directory), else absolute."""
    path = os.path.relpath(SOURCE / relative)
    return str(SOURCE / relative) if path.startswith("..") else path


PACKAGE = workflow_file("physpack")

# The conda environment of the CPU stages (relative to the rule files).
PHYSPACK_ENV = "../../envs/physpack.yaml"


def stage_code(stage):
    """Source files of the package that ``stage`` runs, declared as the rule's
    inputs: a stage whose code changes reruns, and so does everything downstream
    of it. Found from the imports of the stage's module (and of the command line,
    ``python -m physpack``) by :func:`physpack.sources.stage_files`, so a new module
    is never left out."""
    return [f"{PACKAGE}/{name}" for name in stage_files(stage)]


def section(name, keys=None):
    """The config section ``name`` as canonical JSON: the rule's ``params`` trigger
    then sees exactly this section (or only its ``keys``), and nothing else."""
    values = config.get(name, {})
    if keys is not None:
        values = {k: v for k, v in values.items() if k in keys}
    return json.dumps(values, sort_keys=True)


def log_path(rule_name):
    return f"{PATHS['logs']}/{rule_name}.log"


def benchmark_path(rule_name):
    return f"{PATHS['benchmarks']}/{rule_name}.tsv"


# Named runs (`runs:`, physpack.runs): run R trains in results/runs/R/ with its own
# model/train/loader sections; the one model of results/model/ is the config's own.
# Train and evaluate rules serve both through the `run_dir` wildcard.
from physpack.runs import (
    check_runs,
    differing_keys,
    ensembles,
    expand_runs,
    run_sections,
)

try:
    RUNS = expand_runs(config.get("runs"))
    check_runs(config, RUNS)
except ConfigError as exc:
    raise WorkflowError(f"config: {exc}") from None
ENSEMBLES = ensembles(RUNS)
RUN_DIR = r"results(/runs/[^/]+)?"


def run_dir(run=None):
    """Directory of run ``run`` (None: the config's own model)."""
    return "results" if run is None else f"results/runs/{run}"


def run_config(directory):
    """The model/train/loader sections of the run in ``directory``; a
    ``train.init_from`` that names a run becomes that run's best checkpoint."""
    if directory == "results":
        sections = {s: dict(config.get(s, {})) for s in ("model", "train", "loader")}
    else:
        sections = run_sections(config, RUNS[directory.rsplit("/", 1)[-1]])
    init = sections["train"].get("init_from")
    if init in RUNS:
        sections["train"]["init_from"] = f"{run_dir(init)}/model/best.ckpt"
    return sections


def run_section(name):
    """``params`` of a run rule: section ``name`` of the job's run, as canonical
    JSON (editing one run reruns only that run)."""
    return lambda wildcards: json.dumps(
        run_config(wildcards.run_dir)[name], sort_keys=True
    )


def init_checkpoint(wildcards):
    """The checkpoint a fine-tuned run starts from (an input: trained first)."""
    init = run_config(wildcards.run_dir)["train"].get("init_from")
    return [] if init is None else [init]


# The md section: `enabled` picks the default target; the stage reads the rest.
MD = section_from_mapping(MDConfig, config.get("md"), "md")
MD_STAGE_KEYS = [k for k in dataclasses.asdict(MD) if k != "enabled"]


def md_outputs(directory):
    """The stability stage's record for the run in ``directory``, when the md
    section enables it for the default target."""
    return [f"{directory}/md/stability.json"] if MD.enabled else []


def run_outputs():
    """The targets of the named runs for the default target: each run's
    evaluation (and MD stability), each committee's, and the comparison."""
    if not RUNS:
        return []
    return [
        *(f"{run_dir(r)}/eval/metrics.json" for r in RUNS),
        *(out for r in RUNS for out in md_outputs(run_dir(r))),
        *(f"results/ensembles/{e}/metrics.json" for e in ENSEMBLES),
        PATHS["comparison_md"],
    ]


def ensemble_predictions(wildcards):
    """The test predictions of the members of committee ``wildcards.ensemble``."""
    return [f"{run_dir(m)}/eval/predictions.npz" for m in ENSEMBLES[wildcards.ensemble]]


def compare_arguments():
    """``--run`` and ``--ensemble`` arguments of ``physpack compare`` for every
    run and committee, quoted for the shell."""
    args = []
    for r in RUNS:
        files = f"{run_dir(r)}/eval/metrics.json,{run_dir(r)}/model/history.csv"
        args.append(f"--run {shlex.quote(f'{r}={files}')}")
    for e in ENSEMBLES:
        path = f"results/ensembles/{e}/metrics.json"
        args.append(f"--ensemble {shlex.quote(f'{e}={path}')}")
    for r in RUNS:
        for path in md_outputs(run_dir(r)):
            args.append(f"--stability {shlex.quote(f'{r}={path}')}")
    return " ".join(args)


PATHS["comparison_md"] = "results/comparison.md"
PATHS["comparison_html"] = "results/comparison.html"
PATHS["comparison_figures"] = "results/comparison"
