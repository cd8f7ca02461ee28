# Phase 1: the deterministic 900-prompt dataset, under the profile's results (a user's own JSONL at
# config["dataset"] replaces it), and its card: what the texts give away before any model reads them.


rule dataset:
    output:
        BUILT_DATASET,
    log:
        layout.log(RESULTS, "dataset"),
    benchmark:
        layout.benchmark(RESULTS, "dataset", "all")
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens dataset --out {output} 2> {log}"


rule dataset_card:
    input:
        config["dataset"],
    output:
        layout.dataset_card(RESULTS),
    log:
        layout.log(RESULTS, "dataset_card"),
    benchmark:
        layout.benchmark(RESULTS, "dataset_card", "all")
    params:
        readout=readout_json(),
        seed=config["seed"],
        folds=config["subspace"]["probe_folds"],
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens dataset describe --source {input} --readout {params.readout:q} --seed {params.seed} "
        "--folds {params.folds} --out {output} 2> {log}"
