# Phase 7: effect sizes, power, and the number k of cross-model-aligned subspace dimensions.


rule stats_effect:
    input:
        sweeps=per_model(f"{RESULTS}/patching/residual/{{model}}_residual_sweep.pkl"),
        heads=per_model(f"{RESULTS}/patching/head/{{model}}_head_patching.pkl"),
    output:
        f"{RESULTS}/statistics/effect.json",
    log:
        f"{RESULTS}/logs/stats_effect.log",
    benchmark:
        f"{RESULTS}/benchmarks/stats_effect/all.tsv"
    params:
        statistics=config["statistics"],
        n_boot=config["patching"]["n_boot"],
        seed=config["seed"],
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens stats effect --sweeps {input.sweeps} --heads {input.heads} --out {output} "
        "--seed {params.seed} --n-boot {params.n_boot} --n-perm {params.statistics[n_perm]} "
        "--alpha {params.statistics[alpha]} 2> {log}"


rule stats_power:
    input:
        sweeps=per_model(f"{RESULTS}/patching/residual/{{model}}_residual_sweep.pkl"),
        heads=per_model(f"{RESULTS}/patching/head/{{model}}_head_patching.pkl"),
    output:
        f"{RESULTS}/statistics/power.json",
    log:
        f"{RESULTS}/logs/stats_power.log",
    benchmark:
        f"{RESULTS}/benchmarks/stats_power/all.tsv"
    params:
        statistics=config["statistics"],
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens stats power --sweeps {input.sweeps} --heads {input.heads} --out {output} "
        "--alpha {params.statistics[alpha]} --power {params.statistics[power]} 2> {log}"


rule stats_k:
    input:
        activations=per_model(f"{RESULTS}/activations/{{model}}.pkl"),
        subspaces=per_model(f"{RESULTS}/emotion_subspaces/{{model}}_subspaces.pkl"),
    output:
        f"{RESULTS}/statistics/k.json",
    log:
        f"{RESULTS}/logs/stats_k.log",
    benchmark:
        f"{RESULTS}/benchmarks/stats_k/all.tsv"
    params:
        n_perm=config["alignment"]["n_perm"],
        alpha=config["statistics"]["alpha"],
        seed=config["seed"],
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens stats k --activations {input.activations} --subspaces {input.subspaces} --out {output} "
        "--seed {params.seed} --n-perm {params.n_perm} --alpha {params.alpha} 2> {log}"
