import json

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")


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
}

PACKAGE = "workflow/physpack"

# The modules each stage runs, beyond the shared ones: a stage whose code changes
# reruns, and so does everything downstream of it (issue: rerun only what is stale).
SHARED_MODULES = [
    "__init__.py",
    "errors.py",
    "config.py",
    "units.py",
    "atomic.py",
    "data/__init__.py",
    "data/packed.py",
]
STAGE_MODULES = {
    "convert": ["data/convert.py"],
    "validate": ["data/validate.py"],
    "stats": ["data/stats.py", "data/loader.py"],
    "split": ["data/split.py"],
    "train": [
        "training/__init__.py",
        "training/train.py",
        "training/parallel.py",
        "model/__init__.py",
        "model/physnet.py",
        "model/checkpoint.py",
        "data/loader.py",
    ],
    "evaluate": [
        "evaluation/__init__.py",
        "evaluation/evaluate.py",
        "evaluation/plots.py",
        "model/__init__.py",
        "model/physnet.py",
        "model/checkpoint.py",
        "data/loader.py",
    ],
}


def stage_code(stage):
    """Source files of the package that ``stage`` runs (declared as inputs)."""
    return [f"{PACKAGE}/{name}" for name in SHARED_MODULES + STAGE_MODULES[stage]]


def section(name):
    """The config section ``name`` as canonical JSON: the rule's ``params`` trigger
    then sees exactly this section, and nothing else."""
    return json.dumps(config.get(name, {}), sort_keys=True)


def log_path(rule_name):
    return f"{PATHS['logs']}/{rule_name}.log"


def benchmark_path(rule_name):
    return f"{PATHS['benchmarks']}/{rule_name}.tsv"
