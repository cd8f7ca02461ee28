# Phase 1: the deterministic 900-prompt dataset, under the profile's results (a user's own JSONL at
# config["dataset"] replaces it).


rule dataset:
    output:
        BUILT_DATASET,
    log:
        layout.log(RESULTS, "dataset"),
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens dataset --out {output} 2> {log}"
