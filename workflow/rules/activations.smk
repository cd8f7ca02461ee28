# Phase 2: residual-stream activations at every layer, one job per model.


rule activations:
    input:
        dataset=config["dataset"],
        checkpoint=model_checkpoint,
    output:
        layout.activations(RESULTS, "{model}"),
    log:
        layout.log(RESULTS, "activations", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "activations", "{model}")
    params:
        device=config["device"],
        settings=model_settings,
        readout=readout_json(),
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        attempt=job_attempt,
    retries: 1
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens --attempt {resources.attempt} --input-error-file {log}.input_error "
        "activations --name {wildcards.model} --settings {params.settings:q} --readout {params.readout:q} "
        "--dataset {input.dataset} --out {output} --device {params.device} 2> {log}"
