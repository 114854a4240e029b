# The data stages, in pipeline order: the input converted (or described), then
# validated, its packing statistics, the split. Each runs in the physpack
# environment on one core (Snakemake's default); a stage that reads the whole
# dataset asks for DATA_JOB, one that writes a small JSON from other files for
# SMALL_JOB. Minutes grow with each attempt, as a retried stage starts over.
DATA_JOB = dict(
    mem_mb=4000,
    runtime=lambda wildcards, attempt: 60 * attempt,
)
SMALL_JOB = dict(
    mem_mb=1000,
    runtime=lambda wildcards, attempt: 10 * attempt,
)


if SHARDS:

    rule convert_shard:
        input:
            npz=lambda wildcards: SHARDS[wildcards.shard],
            code=stage_code("convert"),
        output:
            directory(PATHS["shard"]),
        log:
            log_path("convert_shard_{shard}"),
        benchmark:
            benchmark_path("convert_shard_{shard}")
        conda:
            PHYSPACK_ENV
        resources:
            **DATA_JOB,
        params:
            data=shard_data_section,
        shell:
            "python -m physpack convert {input.npz:q} {output:q}"
            " --config {params.data:q}"
            " --no-progress > {log:q} 2>&1"

    rule describe_shards:
        input:
            shards=expand(PATHS["shard"], shard=SHARDS),
            code=stage_code("describe"),
        output:
            PATHS["descriptor"],
        log:
            log_path("describe_shards"),
        group:
            "data"
        conda:
            PHYSPACK_ENV
        resources:
            **SMALL_JOB,
        shell:
            "python -m physpack.data.descriptor --output {output:q}"
            " --shards {input.shards:q} > {log:q} 2>&1"

    rule validate_shard:
        input:
            packed=PATHS["shard"],
            code=stage_code("validate"),
        output:
            PATHS["shard_validation"],
        log:
            log_path("validate_shard_{shard}"),
        benchmark:
            benchmark_path("validate_shard_{shard}")
        conda:
            PHYSPACK_ENV
        resources:
            **DATA_JOB,
        params:
            validate=section("validate"),
        shell:
            "python -m physpack validate {input.packed:q} --output {output:q}"
            " --config {params.validate:q} > {log:q} 2>&1"

elif data_source()[0] == "npz":

    rule convert_npz:
        input:
            npz=config["data"]["npz"],
            code=stage_code("convert"),
        output:
            directory(PATHS["packed"]),
        log:
            log_path("convert_npz"),
        benchmark:
            benchmark_path("convert_npz")
        group:
            "data"
        conda:
            PHYSPACK_ENV
        resources:
            **DATA_JOB,
        params:
            data=section("data"),
        shell:
            "python -m physpack convert {input.npz:q} {output:q}"
            " --config {params.data:q}"
            " --no-progress > {log:q} 2>&1"

else:

    rule describe_packed:
        input:
            packed=config["data"]["packed"],
            code=stage_code("describe"),
        output:
            PATHS["descriptor"],
        log:
            log_path("describe_packed"),
        benchmark:
            benchmark_path("describe_packed")
        group:
            "data"
        conda:
            PHYSPACK_ENV
        resources:
            **DATA_JOB,
        params:
            data=section("data"),
        shell:
            "python -m physpack.data.descriptor --output {output:q}"
            " --config {params.data:q} > {log:q} 2>&1"


rule validate_packed:
    input:
        packed=PATHS["dataset"],
        # sharded: the shards' reports, merged without reading the shards again
        shards=expand(PATHS["shard_validation"], shard=SHARDS),
        code=stage_code("validate"),
    output:
        PATHS["validation"],
    log:
        log_path("validate_packed"),
    benchmark:
        benchmark_path("validate_packed")
    group:
        "data"
    conda:
        PHYSPACK_ENV
    resources:
        **(SMALL_JOB if SHARDS else DATA_JOB),
    params:
        validate=section("validate"),
    shell:
        "python -m physpack validate {input.packed:q} --output {output:q}"
        " --shard-reports {input.shards:q}"
        " --config {params.validate:q} > {log:q} 2>&1"


rule packing_stats:
    input:
        packed=PATHS["dataset"],
        code=stage_code("stats"),
    output:
        json=PATHS["stats_json"],
        md=PATHS["stats_md"],
        png=report(
            PATHS["stats_png"],
            caption="../report/packing_stats.rst",
            category="1. Data",
        ),
    log:
        log_path("packing_stats"),
    benchmark:
        benchmark_path("packing_stats")
    group:
        "data"
    conda:
        PHYSPACK_ENV
    resources:
        **DATA_JOB,
    params:
        loader=section("loader"),
        model=section("model", keys=("cutoff", "charges")),
    shell:
        "python -m physpack stats {input.packed:q} --json {output.json:q}"
        " --markdown {output.md:q}"
        " --figure {output.png:q} --config {params.loader:q}"
        " --model-config {params.model:q} > {log:q} 2>&1"


rule split_dataset:
    input:
        packed=PATHS["dataset"],
        code=stage_code("split"),
    output:
        PATHS["split"],
    log:
        log_path("split_dataset"),
    benchmark:
        benchmark_path("split_dataset")
    group:
        "data"
    conda:
        PHYSPACK_ENV
    resources:
        **DATA_JOB,
    params:
        split=section("split"),
    shell:
        "python -m physpack split {input.packed:q} --output {output:q}"
        " --config {params.split:q} > {log:q} 2>&1"
