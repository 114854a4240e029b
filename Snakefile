# physpack: padded NPZ -> packed memmap -> validation -> packing stats -> split
#           -> PhysNet training -> evaluation, MD stability and report.
#
#   snakemake --cores 8 results/model/best.ckpt          # train on the demo data
#   snakemake --cores 8                                  # everything, with evaluation
#   snakemake --report results/report.html               # one HTML report of the run
#   snakemake --profile profiles/slurm                   # the same on a SLURM cluster
#
# Configuration: the files given with --configfile, else ./config.yaml of the
# working directory (in this checkout, the demo's). Keys not set there take the
# defaults of workflow/schemas/config.schema.yaml, never values of another file.


if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/runs.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        PATHS["validation"],
        PATHS["stats_json"],
        PATHS["data_report"],
        # named runs, if any, else the one model of results/model/
        run_outputs() or [PATHS["best"], PATHS["metrics"], *md_outputs("results")],
