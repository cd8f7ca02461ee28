# The findings page: what the run found, generated from the result files, shown in the report.


rule findings:
    input:
        layout.verification(RESULTS),
        layout.dataset_card(RESULTS),
    output:
        report(layout.findings(RESULTS), caption="../report/findings.rst", category="Findings"),
    log:
        layout.log(RESULTS, "findings"),
    benchmark:
        layout.benchmark(RESULTS, "findings", "all")
    params:
        results=lambda wildcards, output: os.path.dirname(output[0]),
        organisms=organisms_json(),
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens findings --results {params.results} --organisms {params.organisms:q} --out {output} 2> {log}"
