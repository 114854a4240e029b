localrules:
    report_data,


rule report_data:
    input:
        validation=PATHS["validation"],
        stats_md=PATHS["stats_md"],
        code=workflow_file("report/data_report.py"),
    output:
        report(
            PATHS["data_report"],
            caption="../report/data.rst",
            category="1. Data",
            labels={"result": "validation and packing statistics"},
        ),
    log:
        log_path("report_data"),
    conda:
        PHYSPACK_ENV
    shell:
        "python {input.code:q} {input.validation:q} {input.stats_md:q} {output:q}"
        " > {log:q} 2>&1"
