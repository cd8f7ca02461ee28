# Phase 7: effect sizes, power, and the number k of cross-model-aligned subspace dimensions.


rule stats_effect:
    input:
        dataset=config["dataset"],
        sweeps=per_model(layout.residual_sweep(RESULTS, "{model}")),
        heads=per_model(layout.head_patching(RESULTS, "{model}")),
    output:
        layout.statistics(RESULTS, "effect"),
    log:
        layout.log(RESULTS, "stats_effect"),
    benchmark:
        layout.benchmark(RESULTS, "stats_effect", "all")
    params:
        statistics=config["statistics"],
        n_boot=config["patching"]["n_boot"],
        seed=config["seed"],
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens stats effect --dataset {input.dataset} --sweeps {input.sweeps} --heads {input.heads} --out {output} "
        "--seed {params.seed} --n-boot {params.n_boot} --n-perm {params.statistics[n_perm]} "
        "--alpha {params.statistics[alpha]} 2> {log}"


rule stats_power:
    input:
        sweeps=per_model(layout.residual_sweep(RESULTS, "{model}")),
        heads=per_model(layout.head_patching(RESULTS, "{model}")),
    output:
        layout.statistics(RESULTS, "power"),
    log:
        layout.log(RESULTS, "stats_power"),
    benchmark:
        layout.benchmark(RESULTS, "stats_power", "all")
    params:
        statistics=config["statistics"],
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens stats power --sweeps {input.sweeps} --heads {input.heads} --out {output} "
        "--alpha {params.statistics[alpha]} --power {params.statistics[power]} 2> {log}"


rule stats_k:
    input:
        activations=per_model(layout.activations(RESULTS, "{model}")),
        subspaces=per_model(layout.subspaces(RESULTS, "{model}")),
        words=layout.activations(RESULTS, WORDS),
        twins=[layout.activations(RESULTS, t) for t in TWINS],
    output:
        layout.statistics(RESULTS, "k"),
    log:
        layout.log(RESULTS, "stats_k"),
    benchmark:
        layout.benchmark(RESULTS, "stats_k", "all")
    params:
        n_perm=config["alignment"]["n_perm"],
        alpha=config["statistics"]["alpha"],
        seed=config["seed"],
        twin_of=" ".join(TWINS.values()),
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens stats k --activations {input.activations} --subspaces {input.subspaces} --words {input.words} "
        "--ceiling-activations {input.twins} --ceiling-of {params.twin_of} --out {output} "
        "--seed {params.seed} --n-perm {params.n_perm} --alpha {params.alpha} 2> {log}"
