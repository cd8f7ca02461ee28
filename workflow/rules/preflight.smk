# Pre-flight, the first job of a profile with hub models: are the weights cached, can they be fetched (gated
# models need an accepted licence and a token), and do they fit on disk? One line per problem, before any
# model job starts. It runs where Snakemake runs (a login node has the network a compute node may lack).


localrules:
    preflight,


rule preflight:
    output:
        PREFLIGHT,
    log:
        layout.log(RESULTS, "preflight"),
    benchmark:
        layout.benchmark(RESULTS, "preflight", "all")
    params:
        models=hub_models_json(),
    conda:
        "../../envs/emolens.yaml"
    shell:
        "emolens preflight --models {params.models:q} --out {output} > {log} 2>&1"
