# Before the long jobs, one job per model: every prompt within the model's context, then residual capture, the
# label readout and fast patching against their references on two prompts, with the model's own weights. Every
# model job waits for every model's check, so a prompt too long or an architecture the adapter misreads stops
# the run before any long job.


rule equivalence:
    input:
        dataset=config["dataset"],
        checkpoint=model_source,
    output:
        layout.equivalence(RESULTS, "{model}"),
    log:
        layout.log(RESULTS, "equivalence", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "equivalence", "{model}")
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
        "equivalence --name {wildcards.model} --settings {params.settings:q} --readout {params.readout:q} "
        "--dataset {input.dataset} --out {output} --device {params.device} 2> {log}"
