# Phase 4: cross-model alignment for every model pair, any widths (texts alike, emotion alike, and
# emotion-specific tests, each with its own null), then a summary that counts significance after
# Benjamini-Hochberg within each declared family.


rule align_pair:
    input:
        unpack(pair_inputs),
    output:
        layout.alignment_pair(RESULTS, "{pair}"),
    log:
        layout.log(RESULTS, "align_pair", "{pair}"),
    benchmark:
        layout.benchmark(RESULTS, "align_pair", "{pair}")
    params:
        alignment=config["alignment"],
        seed=config["seed"],
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens align --activations {input.activations} --vectors {input.vectors} "
        "--subspaces {input.subspaces} --out {output} --seed {params.seed} "
        "--n-perm {params.alignment[n_perm]} --knn-k {params.alignment[knn_k]} 2> {log}"


rule align_summary:
    input:
        expand(layout.alignment_pair(RESULTS, "{pair}"), pair=PAIRS),
    output:
        layout.alignment_summary(RESULTS),
    log:
        layout.log(RESULTS, "align_summary"),
    benchmark:
        layout.benchmark(RESULTS, "align_summary", "all")
    params:
        alpha=config["statistics"]["alpha"],
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens align-summary --pairs {input} --out {output} --alpha {params.alpha} 2> {log}"
