rule evaluate_model:
    input:
        packed=PATHS["dataset"],
        split=PATHS["split"],
        best="{run_dir}/model/best.ckpt",
        history="{run_dir}/model/history.csv",
        code=stage_code("evaluate"),
    output:
        metrics=report(
            "{run_dir}/eval/metrics.json",
            caption="../report/metrics_json.rst",
            category="2. Evaluation",
            labels={"result": "metrics (JSON)"},
        ),
        metrics_md="{run_dir}/eval/metrics.md",
        metrics_html=report(
            "{run_dir}/eval/metrics.html",
            caption="../report/metrics.rst",
            category="2. Evaluation",
            labels={"result": "metrics table"},
        ),
        predictions="{run_dir}/eval/predictions.npz",
        figures=report(
            directory("{run_dir}/eval/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="2. Evaluation",
            labels={"result": "{name}"},
        ),
    log:
        "{run_dir}/logs/evaluate_model.log",
    benchmark:
        "{run_dir}/benchmarks/evaluate_model.tsv"
    wildcard_constraints:
        run_dir=RUN_DIR,
    conda:
        "../../envs/physpack-cuda.yaml"
    threads: 4
    resources:
        gpu=1,
        cpus_per_task=lambda wildcards, threads: threads,
        mem_mb=16000,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        loader=run_section("loader"),
    shell:
        "python -m physpack evaluate {input.packed:q} --split {input.split:q}"
        " --checkpoint {input.best:q} --history {input.history:q}"
        " --metrics {output.metrics:q} --metrics-md {output.metrics_md:q}"
        " --metrics-html {output.metrics_html:q}"
        " --predictions {output.predictions:q} --figures {output.figures:q}"
        " --loader-config {params.loader:q} > {log:q} 2>&1"


rule md_stability:
    input:
        packed=PATHS["dataset"],
        split=PATHS["split"],
        best="{run_dir}/model/best.ckpt",
        code=stage_code("md-stability"),
    output:
        json="{run_dir}/md/stability.json",
        markdown="{run_dir}/md/stability.md",
        html=report(
            "{run_dir}/md/stability.html",
            caption="../report/md_stability.rst",
            category="3. Simulation",
            labels={"result": "stability table"},
        ),
        figure=report(
            "{run_dir}/md/stability.png",
            caption="../report/md_stability.rst",
            category="3. Simulation",
            labels={"result": "energy and bond stretch"},
        ),
        trajectories=directory("{run_dir}/md/trajectories"),
    log:
        "{run_dir}/logs/md_stability.log",
    benchmark:
        "{run_dir}/benchmarks/md_stability.tsv"
    wildcard_constraints:
        run_dir=RUN_DIR,
    conda:
        "../../envs/physpack-cuda.yaml"
    threads: 4
    resources:
        gpu=1,
        cpus_per_task=lambda wildcards, threads: threads,
        mem_mb=16000,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        # the section without `enabled` (which only picks the default target)
        md=section("md", keys=MD_STAGE_KEYS),
    shell:
        "python -m physpack md-stability {input.packed:q} --split {input.split:q}"
        " --checkpoint {input.best:q} --json {output.json:q}"
        " --markdown {output.markdown:q} --html {output.html:q}"
        " --figure {output.figure:q} --trajectories {output.trajectories:q}"
        " --md-config {params.md:q} > {log:q} 2>&1"
