# Phase 2: residual-stream activations at every layer, one job per model; the same forwards give the readout
# baseline (does the model read the emotion at all? its own prediction, one label per emotion).


rule activations:
    input:
        dataset=config["dataset"],
        checkpoint=model_checkpoint,
    output:
        activations=layout.activations(RESULTS, "{model}"),
        readout=layout.readout(RESULTS, "{model}"),
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
        "--dataset {input.dataset} --out {output.activations} --readout-out {output.readout} "
        "--device {params.device} 2> {log}"
