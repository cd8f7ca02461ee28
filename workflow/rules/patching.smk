# Phase 5: residual-stream activation patching, one job per model x layer chunk, then a merge.


rule residual_chunk:
    input:
        dataset=config["dataset"],
        checkpoint=model_checkpoint,
    output:
        layout.residual_chunks(RESULTS, "{model}") / "layers_{first}-{last}.pkl",
    log:
        layout.log(RESULTS, "residual_chunk", "{model}__layers_{first}-{last}"),
    benchmark:
        layout.benchmark(RESULTS, "residual_chunk", "{model}__layers_{first}-{last}")
    params:
        device=config["device"],
        settings=model_settings,
        readout=readout_json(),
        pairs=pair_flags(),
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        attempt=job_attempt,
    retries: 1
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens --attempt {resources.attempt} --input-error-file {log}.input_error "
        "residual-chunk --name {wildcards.model} --settings {params.settings:q} --readout {params.readout:q} "
        "--dataset {input.dataset} --layers {wildcards.first}-{wildcards.last} --out {output} "
        "{params.pairs} --device {params.device} 2> {log}"


rule residual_merge:
    input:
        residual_chunks,
    output:
        layout.residual_sweep(RESULTS, "{model}"),
    log:
        layout.log(RESULTS, "residual_merge", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "residual_merge", "{model}")
    params:
        n_layers=lambda wildcards: n_layers(wildcards.model),
        n_boot=config["patching"]["n_boot"],
        min_separation=config["patching"]["min_separation"],
        seed=config["seed"],
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens residual-merge --chunks {input} --n-layers {params.n_layers} --out {output} "
        "--n-boot {params.n_boot} --min-separation {params.min_separation} --seed {params.seed} 2> {log}"
