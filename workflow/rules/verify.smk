# Verification of every output, one timing record per job, and the report's figures.


rule verify:
    input:
        dataset=config["dataset"],
        results=phase_outputs(),
    output:
        report(layout.verification(RESULTS), caption="../report/verification.rst", category="Verification"),
    log:
        layout.log(RESULTS, "verify"),
    benchmark:
        layout.benchmark(RESULTS, "verify", "all")
    params:
        results=lambda wildcards, output: os.path.dirname(output[0]),
        models=" ".join(MODELS),
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens verify --results {params.results} --models {params.models} --dataset {input.dataset} "
        "--out {output} 2> {log}"


rule timing:
    input:
        [job["output"] for job in timed_jobs()],
    output:
        layout.timing(RESULTS),
    log:
        layout.log(RESULTS, "timing"),
    benchmark:
        layout.benchmark(RESULTS, "timing", "all")
    params:
        jobs=json.dumps(timed_jobs()),
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens timing --jobs {params.jobs:q} --out {output} 2> {log}"


rule figures:
    input:
        phase_outputs(),
    output:
        [
            report(layout.figure(RESULTS, name), caption=f"../report/{name}.rst", category="Figures",
                   labels={"figure": name.replace("_", " ")})
            for name in FIGURES
        ],
    log:
        layout.log(RESULTS, "figures"),
    benchmark:
        layout.benchmark(RESULTS, "figures", "all")
    params:
        results=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),
        out=lambda wildcards, output: os.path.dirname(output[0]),
        models=" ".join(MODELS),
        organisms=organisms_json(),
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens figures --results {params.results} --models {params.models} --organisms {params.organisms:q} "
        "--out {params.out} 2> {log}"
