# physpack: padded NPZ -> packed memmap -> validation -> packing stats -> split
#           -> PhysNet training -> evaluation and report.
#
#   snakemake --cores 8 results/model/best.ckpt          # train on the demo data
#   snakemake --cores 8                                  # everything, with evaluation
#   snakemake --report results/report.html               # one HTML report of the run
#   snakemake --profile profiles/slurm                   # the same on a SLURM cluster


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        PATHS["validation"],
        PATHS["stats_json"],
        PATHS["best"],
        PATHS["metrics"],
