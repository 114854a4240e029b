rule train_model:
    input:
        packed=PATHS["dataset"],
        split=PATHS["split"],
        validation=PATHS["validation"],
        code=stage_code("train"),
    output:
        best=PATHS["best"],
        history=PATHS["history"],
    log:
        log_path("train_model"),
    benchmark:
        benchmark_path("train_model")
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
        model=section("model"),
        train=section("train"),
        loader=section("loader"),
        state=PATHS["state"],
    shell:
        "{resources.mpi} python -m physpack train {input.packed:q}"
        " --split {input.split:q}"
        " --output {output.best:q} --history {output.history:q}"
        " --state-dir {params.state:q} --model-config {params.model:q}"
        " --train-config {params.train:q} --loader-config {params.loader:q}"
        " --no-progress > {log:q} 2>&1"
