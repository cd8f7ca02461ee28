# Phase 1: the deterministic 900-prompt dataset (a user's own JSONL at config["dataset"] replaces it).


rule dataset:
    output:
        "data/emotion_dataset.jsonl",
    log:
        "logs/dataset.log",
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens dataset --out {output} 2> {log}"
