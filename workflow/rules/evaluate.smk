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
