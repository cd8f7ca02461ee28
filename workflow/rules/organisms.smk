# Embedded demo: tiny model organisms built and trained offline, saved as Hugging Face checkpoints.


rule organism:
    input:
        dataset=config["dataset"],
    output:
        layout.organism_readout(RESULTS, "{model}"),
    log:
        layout.log(RESULTS, "organism", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "organism", "{model}")
    params:
        device=config["device"],
        settings=model_settings,
        readout=readout_json(),
        out=lambda w, output: os.path.dirname(output[0]),
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens organism --name {wildcards.model} --settings {params.settings:q} --readout {params.readout:q} "
        "--dataset {input.dataset} --out {params.out} --device {params.device} 2> {log}"
