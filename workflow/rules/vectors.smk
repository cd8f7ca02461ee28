# Phase 3: emotion vectors, frame-grouped probes, lexical baseline, cross-register transfer and
# emotion subspaces, one job per model.


rule vectors:
    input:
        activations=layout.activations(RESULTS, "{model}"),
        dataset=config["dataset"],
    output:
        vectors=layout.vectors(RESULTS, "{model}"),
        subspaces=layout.subspaces(RESULTS, "{model}"),
    log:
        layout.log(RESULTS, "vectors", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "vectors", "{model}")
    params:
        k_max=config["subspace"]["k_max"],
        folds=config["subspace"]["probe_folds"],
        seed=config["seed"],
        n_perm=config["statistics"]["n_perm"],
        n_boot=config["patching"]["n_boot"],
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens vectors --activations {input.activations} --dataset {input.dataset} "
        "--vectors-out {output.vectors} "
        "--subspaces-out {output.subspaces} --k-max {params.k_max} --folds {params.folds} "
        "--seed {params.seed} --n-perm {params.n_perm} --n-boot {params.n_boot} 2> {log}"
