# Phase 4: cross-model alignment for every model pair, any widths (texts alike, emotion alike, and
# emotion-specific tests, each with its own null; overall, per register and with the words controlled), each
# model against the words reference and each ceiling twin against its model, then a summary that counts
# significance after Benjamini-Hochberg within each declared family.


rule words:
    input:
        dataset=config["dataset"],
    output:
        layout.activations(RESULTS, WORDS),
    log:
        layout.log(RESULTS, "words"),
    benchmark:
        layout.benchmark(RESULTS, "words", "all")
    params:
        readout=readout_json(),
        seed=config["seed"],
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens words --dataset {input.dataset} --readout {params.readout:q} --out {output} --seed {params.seed} "
        "2> {log}"


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
        flags=align_flags,
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens align --activations {input.activations} {params.flags} --out {output} --seed {params.seed} "
        "--n-perm {params.alignment[n_perm]} --knn-k {params.alignment[knn_k]} 2> {log}"


rule align_summary:
    input:
        expand(layout.alignment_pair(RESULTS, "{pair}"), pair=ALIGN_PAIRS),
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
