# Verification of every output, one timing record per job, and the report's figures.


rule verify:
    input:
        dataset=config["dataset"],
        results=[
            *per_model(f"{RESULTS}/emotion_vectors/{{model}}_vectors.pkl"),
            *per_model(f"{RESULTS}/patching/residual/{{model}}_residual_sweep.pkl"),
            *per_model(f"{RESULTS}/screening/head_scores_{{model}}.json"),
            *per_model(f"{RESULTS}/patching/head/{{model}}_head_patching.pkl"),
            f"{RESULTS}/alignment/summary.json",
            *expand(f"{RESULTS}/statistics/{{mode}}.json", mode=["effect", "power", "k"]),
        ],
    output:
        f"{RESULTS}/verification.json",
    log:
        f"{RESULTS}/logs/verify.log",
    params:
        results=lambda wildcards, output: os.path.dirname(output[0]),
        models=" ".join(MODELS),
        min_spearman=config["verification"]["min_spearman"],
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens verify --results {params.results} --models {params.models} --dataset {input.dataset} "
        "--min-spearman {params.min_spearman} --out {output} 2> {log}"


rule timing:
    input:
        [job["output"] for job in timed_jobs()],
    output:
        f"{RESULTS}/timing/phase_timings.jsonl",
    log:
        f"{RESULTS}/logs/timing.log",
    params:
        jobs=json.dumps(timed_jobs()),
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens timing --jobs {params.jobs:q} --out {output} 2> {log}"
