# Steering and directional ablation of the emotion vectors, one job per model; cross-model steering
# transfer, one job per target model (every other model's vectors carried into it), and the pair matrix.


localrules:
    steer_transfer_summary,


rule steer:
    input:
        dataset=config["dataset"],
        checkpoint=model_checkpoint,
        activations=layout.activations(RESULTS, "{model}"),
    output:
        layout.steering(RESULTS, "{model}"),
    log:
        layout.log(RESULTS, "steer", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "steer", "{model}")
    params:
        device=config["device"],
        settings=model_settings,
        readout=readout_json(),
        flags=steering_flags(),
        alphas=" ".join(map(str, config["steering"]["alphas"])),
        layer_stride=config["steering"]["layer_stride"],
        kl_prompts=config["steering"]["kl_prompts"],
        n_random_subspaces=config["steering"]["n_random_subspaces"],
        n_random=config["steering"]["n_random"],
        kl_budget=config["steering"]["kl_budget"],
        templates=json.dumps(config["steering"]["templates"]),
        max_depth=config["steering"]["max_depth"],
        n_perm=config["steering"]["n_perm"],
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        attempt=job_attempt,
    retries: 1
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens --attempt {resources.attempt} --input-error-file {log}.input_error "
        "steer --name {wildcards.model} --settings {params.settings:q} --readout {params.readout:q} "
        "--dataset {input.dataset} --activations {input.activations} --out {output} {params.flags} "
        "--alphas {params.alphas} --layer-stride {params.layer_stride} --kl-prompts {params.kl_prompts} "
        "--n-random-subspaces {params.n_random_subspaces} --n-random {params.n_random} "
        "--kl-budget {params.kl_budget} --templates {params.templates:q} --max-depth {params.max_depth} "
        "--n-perm {params.n_perm} "
        "--device {params.device} 2> {log}"


rule steer_transfer:
    input:
        dataset=config["dataset"],
        checkpoint=model_checkpoint,
        activations=per_model(layout.activations(RESULTS, "{model}")),
        steering=layout.steering(RESULTS, "{model}"),
        words=layout.activations(RESULTS, WORDS),
    output:
        layout.steering_transfer(RESULTS, "{model}"),
    log:
        layout.log(RESULTS, "steer_transfer", "{model}"),
    benchmark:
        layout.benchmark(RESULTS, "steer_transfer", "{model}")
    params:
        device=config["device"],
        settings=model_settings,
        readout=readout_json(),
        flags=steering_flags(),
        ridge=config["steering"]["ridge"],
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        attempt=job_attempt,
    retries: 1
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens --attempt {resources.attempt} --input-error-file {log}.input_error "
        "steer-transfer --name {wildcards.model} --settings {params.settings:q} --readout {params.readout:q} "
        "--dataset {input.dataset} --activations {input.activations} --steering {input.steering} --words {input.words} "
        "--out {output} {params.flags} --ridge {params.ridge} --device {params.device} 2> {log}"


rule steer_transfer_summary:
    input:
        expand(layout.steering_transfer(RESULTS, "{model}"), model=TRANSFER_TARGETS),
    output:
        layout.steering_transfer_summary(RESULTS),
    log:
        layout.log(RESULTS, "steer_transfer_summary"),
    benchmark:
        layout.benchmark(RESULTS, "steer_transfer_summary", "all")
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens steer-transfer-summary --inputs {input} --out {output} 2> {log}"
