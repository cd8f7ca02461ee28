# The one place with logic: config reading, wildcard constraints, input and param functions.
import itertools
import json

from snakemake.exceptions import WorkflowError

from emolens.plan import known_architectures, resolve_architecture
from emolens.chunks import chunk_name, chunk_ranges

RESULTS = f"results/{config['profile']}"
MODELS = list(config["models"])
PAIRS = [f"{a}__{b}" for a, b in itertools.combinations(MODELS, 2)]


localrules:
    all,
    align_summary,
    timing,


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    first=r"\d+",
    last=r"\d+",


def model_settings(wildcards):
    """A model's own settings as JSON: the only config a model job sees."""
    return json.dumps(config["models"][wildcards.model], sort_keys=True)


def model_checkpoint(wildcards):
    """The organism's readout record when the workflow builds the model itself, else nothing."""
    settings = config["models"][wildcards.model]
    if "organism" not in settings:
        return []
    home = f"{RESULTS}/models/{wildcards.model}"
    if settings.get("path") != home:
        raise WorkflowError(f"models.{wildcards.model}.path must be {home!r}: the workflow builds its organism there")
    return f"{home}/readout_accuracy.json"


def pair_flags():
    """CLI flags that choose the source/target pairs and the patching direction."""
    p = config["patching"]
    subsample = f"--max-pairs {p['max_pairs']}" if p["max_pairs"] else ""
    return f"--direction {p['direction']} --seed {config['seed']} {subsample}"


def n_layers(model):
    """Decoder layers of a model: its setting, its organism, its config.json or architectures.json."""
    settings = config["models"][model]
    if "n_layers" in settings:
        return settings["n_layers"]
    arch, why = resolve_architecture(model, settings, known_architectures())
    if arch is None:
        raise WorkflowError(f"models.{model}: {why}; set models.{model}.n_layers")
    return arch.n_layers


def residual_chunks(wildcards):
    """The phase-5 chunk files of one model: one job per layer chunk."""
    size = config["models"][wildcards.model]["layer_chunk"]
    return [
        f"{RESULTS}/patching/residual/chunks/{wildcards.model}/{chunk_name(a, b)}"
        for a, b in chunk_ranges(n_layers(wildcards.model), size)
    ]


def pair_inputs(wildcards):
    """Activations, vectors and subspaces of the two models of an alignment pair."""
    a, b = wildcards.pair.split("__")
    return {
        "activations": [f"{RESULTS}/activations/{m}.pkl" for m in (a, b)],
        "vectors": [f"{RESULTS}/emotion_vectors/{m}_vectors.pkl" for m in (a, b)],
        "subspaces": [f"{RESULTS}/emotion_subspaces/{m}_subspaces.pkl" for m in (a, b)],
    }


def per_model(pattern):
    """One path per model."""
    return expand(pattern, model=MODELS)


def timed_jobs():
    """Every timed job: rule, model, chunk, its benchmark file and its output."""
    jobs = []
    for m in MODELS:
        if "organism" in config["models"][m]:
            jobs.append(("organism", m, None, f"{RESULTS}/models/{m}/readout_accuracy.json"))
        jobs.append(("activations", m, None, f"{RESULTS}/activations/{m}.pkl"))
        jobs.append(("vectors", m, None, f"{RESULTS}/emotion_vectors/{m}_vectors.pkl"))
        for a, b in chunk_ranges(n_layers(m), config["models"][m]["layer_chunk"]):
            chunk = chunk_name(a, b).removesuffix(".pkl")
            jobs.append(("residual_chunk", m, chunk, f"{RESULTS}/patching/residual/chunks/{m}/{chunk}.pkl"))
        jobs.append(("residual_merge", m, None, f"{RESULTS}/patching/residual/{m}_residual_sweep.pkl"))
        jobs.append(("screen_heads", m, None, f"{RESULTS}/screening/head_scores_{m}.json"))
        jobs.append(("patch_heads", m, None, f"{RESULTS}/patching/head/{m}_head_patching.pkl"))
    jobs += [("align_pair", p, None, f"{RESULTS}/alignment/{p}.pkl") for p in PAIRS]
    jobs += [(f"stats_{mode}", None, None, f"{RESULTS}/statistics/{mode}.json") for mode in ("effect", "power", "k")]
    return [
        {"rule": r, "model": m, "chunk": c, "output": out,
         "benchmark": f"{RESULTS}/benchmarks/{r}/{m or 'all'}{f'__{c}' if c else ''}.tsv"}
        for r, m, c, out in jobs
    ]


def phase_outputs():
    """The outputs of phases 3-7 that verification checks and the figures draw."""
    return [
        *per_model(f"{RESULTS}/emotion_vectors/{{model}}_vectors.pkl"),
        *per_model(f"{RESULTS}/patching/residual/{{model}}_residual_sweep.pkl"),
        *per_model(f"{RESULTS}/screening/head_scores_{{model}}.json"),
        *per_model(f"{RESULTS}/patching/head/{{model}}_head_patching.pkl"),
        f"{RESULTS}/alignment/summary.json",
        *expand(f"{RESULTS}/statistics/{{mode}}.json", mode=["effect", "power", "k"]),
    ]


def all_targets():
    """Every final output: verification (which needs every phase), timing and the report's figures."""
    return [f"{RESULTS}/verification.json", f"{RESULTS}/timing/phase_timings.jsonl", f"{RESULTS}/figures"]
