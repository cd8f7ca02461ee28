# Phase 6: (a) screening of every attention head, exact and attribution; (b) patching of the top heads.


rule screen_heads:
    input:
        dataset=config["dataset"],
        checkpoint=model_checkpoint,
    output:
        layout.head_scores(RESULTS, "{model}"),
    log:
        layout.log(RESULTS, "screen_heads", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "screen_heads", "{model}")
    params:
        device=config["device"],
        settings=model_settings,
        readout=readout_json(),
        top_k=config["patching"]["top_k_heads"],
        pairs=pair_flags(),
        min_separation=config["patching"]["min_separation"],
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        attempt=job_attempt,
    retries: 1
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens --attempt {resources.attempt} --input-error-file {log}.input_error "
        "screen-heads --name {wildcards.model} --settings {params.settings:q} --readout {params.readout:q} "
        "--dataset {input.dataset} --out {output} --top-k {params.top_k} {params.pairs} --min-separation {params.min_separation} "
        "--device {params.device} 2> {log}"


rule patch_heads:
    input:
        dataset=config["dataset"],
        checkpoint=model_checkpoint,
        screening=layout.head_scores(RESULTS, "{model}"),
    output:
        layout.head_patching(RESULTS, "{model}"),
    log:
        layout.log(RESULTS, "patch_heads", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "patch_heads", "{model}")
    params:
        device=config["device"],
        settings=model_settings,
        readout=readout_json(),
        n_boot=config["patching"]["n_boot"],
        pairs=pair_flags(),
        min_separation=config["patching"]["min_separation"],
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        attempt=job_attempt,
    retries: 1
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens --attempt {resources.attempt} --input-error-file {log}.input_error "
        "patch-heads --name {wildcards.model} --settings {params.settings:q} --readout {params.readout:q} "
        "--dataset {input.dataset} --screening {input.screening} --out {output} "
        "--n-boot {params.n_boot} {params.pairs} --min-separation {params.min_separation} --device {params.device} 2> {log}"
