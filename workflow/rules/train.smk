rule train_model:
    input:
        packed=PATHS["dataset"],
        split=PATHS["split"],
        validation=PATHS["validation"],
        init=init_checkpoint,
        code=stage_code("train"),
    output:
        best="{run_dir}/model/best.ckpt",
        history="{run_dir}/model/history.csv",
    log:
        "{run_dir}/logs/train_model.log",
    benchmark:
        "{run_dir}/benchmarks/train_model.tsv"
    wildcard_constraints:
        run_dir=RUN_DIR,
    conda:
        "../../envs/physpack-cuda.yaml"
    threads: 8
    resources:
        gpu=1,
        cpus_per_task=lambda wildcards, threads: threads,
        mem_mb=16000,
        # minutes; constant, since a retried job resumes from its saved state
        runtime=720,
        mpi="",
    params:
        model=run_section("model"),
        train=run_section("train"),
        loader=run_section("loader"),
        state=lambda wildcards: f"{wildcards.run_dir}/model/state",
    shell:
        "{resources.mpi} python -m physpack train {input.packed:q}"
        " --split {input.split:q}"
        " --output {output.best:q} --history {output.history:q}"
        " --state-dir {params.state:q} --model-config {params.model:q}"
        " --train-config {params.train:q} --loader-config {params.loader:q}"
        " --no-progress > {log:q} 2>&1"
