# Attention vs MLP: every block's attention (mixer) and MLP write into the residual stream patched at the last
# position, for the residual sweep's pairs; one job per model.


rule sublayers:
    input:
        dataset=config["dataset"],
        checkpoint=model_checkpoint,
    output:
        layout.sublayers(RESULTS, "{model}"),
    log:
        layout.log(RESULTS, "sublayers", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "sublayers", "{model}")
    params:
        device=config["device"],
        settings=model_settings,
        readout=readout_json(),
        pairs=pair_flags(),
        n_boot=config["patching"]["n_boot"],
        n_perm=config["statistics"]["n_perm"],
        alpha=config["statistics"]["alpha"],
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
        "sublayers --name {wildcards.model} --settings {params.settings:q} --readout {params.readout:q} "
        "--dataset {input.dataset} --out {output} {params.pairs} --n-boot {params.n_boot} --n-perm {params.n_perm} "
        "--alpha {params.alpha} --min-separation {params.min_separation} --device {params.device} 2> {log}"
