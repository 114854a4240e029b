# The committee's numbers and the comparison take seconds: no cluster job of their
# own.
localrules:
    evaluate_ensemble,
    compare_runs,


rule evaluate_ensemble:
    input:
        predictions=ensemble_predictions,
        code=stage_code("ensemble"),
    output:
        "results/ensembles/{ensemble}/metrics.json",
    log:
        "results/logs/evaluate_ensemble_{ensemble}.log",
    conda:
        PHYSPACK_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=lambda wildcards, attempt: 30 * attempt,
    shell:
        "python -m physpack ensemble {input.predictions:q} --output {output:q}"
        " > {log:q} 2>&1"


rule compare_runs:
    input:
        metrics=[f"{run_dir(r)}/eval/metrics.json" for r in RUNS],
        histories=[f"{run_dir(r)}/model/history.csv" for r in RUNS],
        ensembles=[f"results/ensembles/{e}/metrics.json" for e in ENSEMBLES],
        stability=[out for r in RUNS for out in md_outputs(run_dir(r))],
        stability_figures=[
            out.replace(".json", ".png")
            for r in RUNS
            for out in md_outputs(run_dir(r))
        ],
        code=stage_code("compare"),
    output:
        md=PATHS["comparison_md"],
        html=report(
            PATHS["comparison_html"],
            caption="../report/comparison.rst",
            category="4. Comparison of runs",
            labels={"result": "table"},
        ),
        figures=report(
            directory(PATHS["comparison_figures"]),
            patterns=["{name}.png"],
            caption="../report/comparison.rst",
            category="4. Comparison of runs",
            labels={"result": "{name}"},
        ),
    log:
        log_path("compare_runs"),
    conda:
        PHYSPACK_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        # the inputs above as command-line arguments
        runs=compare_arguments(),
        differing=json.dumps(differing_keys(config, RUNS), sort_keys=True),
    shell:
        "python -m physpack compare {params.runs}"
        " --params {params.differing:q} --markdown {output.md:q}"
        " --html {output.html:q} --figures {output.figures:q} > {log:q} 2>&1"
