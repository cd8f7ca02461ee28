# Readout baseline: does the model read the emotion at all? Its own prediction (one label per emotion), one job per model.


rule readout:
    input:
        dataset=config["dataset"],
        checkpoint=model_checkpoint,
    output:
        layout.readout(RESULTS, "{model}"),
    log:
        layout.log(RESULTS, "readout", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "readout", "{model}")
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
        "readout --name {wildcards.model} --settings {params.settings:q} --readout {params.readout:q} "
        "--dataset {input.dataset} --out {output} --device {params.device} 2> {log}"
