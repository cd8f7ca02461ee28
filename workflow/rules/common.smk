# The one place with logic: config reading, wildcard constraints, input and param functions.
import itertools
import json

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from emolens.plan import known_architectures, resolve_architecture
from emolens.chunks import chunk_name, chunk_ranges

RESULTS = f"results/{config['profile']}"
BUILT_DATASET = f"{RESULTS}/data/emotion_dataset.jsonl"  # the workflow's own dataset, one copy per profile
config["dataset"] = config.get("dataset") or BUILT_DATASET  # a user's own JSONL is used as it is
MODELS = list(config["models"])
PAIRS = [f"{a}__{b}" for a, b in itertools.combinations(MODELS, 2)]
TRANSFER_TARGETS = MODELS if len(MODELS) > 1 else []  # steering transfer into each model from every other one
CROSS_MODEL = len(MODELS) > 1  # alignment, its summary, k and steering transfer compare two models or more
if not CROSS_MODEL:
    logger.info(f"One model ({MODELS[0]}): the cross-model phases (alignment pairs and summary, statistics/k, "
                "steering transfer) have nothing to pair and are skipped; verification says so.")
STATISTICS = ["effect", "power", "k"] if CROSS_MODEL else ["effect", "power"]  # phase-7 outputs
# The report's figures (emolens.figures.FIGURES and, with two models or more, CROSS_MODEL_FIGURES), each with its
# caption in workflow/report/<name>.rst.
FIGURES = ["probe_accuracy", "residual_patching", "head_scores", "residual_effect_last_position", "readout_baseline",
           "steering_dose_response", "steering_specificity", "steering_ablation"]
FIGURES += ["alignment", "steering_transfer"] if CROSS_MODEL else []
# Models the workflow fetches from the Hugging Face hub (no local path, not built here): pre-flight checks them first.
HUB_MODELS = [m for m, s in config["models"].items() if s.get("hf_id") and not s.get("path") and not s.get("gguf_file")]
PREFLIGHT = f"{RESULTS}/preflight.json"
if HUB_MODELS and workflow.is_main_process and not os.path.exists(PREFLIGHT):
    from emolens.preflight import cached_checkpoint  # the local cache only: no network

    _missing = [m for m in HUB_MODELS if not cached_checkpoint(config["models"][m]["hf_id"],
                                                              config["models"][m].get("revision"))[0]]
    if _missing:
        _profile = " ".join(os.path.relpath(f) for f in workflow.configfiles) or "<profile>"
        logger.warning(f"Not in the Hugging Face cache: {', '.join(_missing)}. The first job (preflight) checks "
                       f"whether they can be fetched (gated models need an accepted licence and a token) and fit on "
                       f"disk; `emolens preflight --configfile {_profile}` shows it now.")


localrules:
    all,
    align_summary,
    timing,


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    first=r"\d+",
    last=r"\d+",


def job_attempt(wildcards, attempt):
    """The job's attempt (1, then 2 on a retry) as a resource, so the shell can pass it to emolens: a retry after
    an input error (exit 2) repeats the error instead of running again; out of memory (exit 3) is retried."""
    return attempt


def model_settings(wildcards):
    """A model's own settings as JSON: the only config a model job sees."""
    return json.dumps(config["models"][wildcards.model], sort_keys=True)


def readout_json():
    """The readout section as JSON (prompt prefix and suffix, label words): every model job reads the same."""
    return json.dumps(config["readout"], sort_keys=True)


def hub_models_json():
    """The hub models' download settings as JSON: what pre-flight checks (batch sizes and the like never rerun it)."""
    keys = ("hf_id", "revision", "dtype")
    return json.dumps({m: {k: config["models"][m].get(k) for k in keys} for m in HUB_MODELS})


def model_checkpoint(wildcards):
    """What a model job waits for before it loads the model: the organism's readout record when the workflow builds
    the model itself; the pre-flight report for a hub model (ancient: rerunning pre-flight, e.g. after a model is
    added, reruns no model job); else nothing."""
    settings = config["models"][wildcards.model]
    if wildcards.model in HUB_MODELS:
        return ancient(PREFLIGHT)
    if "organism" not in settings:
        return []
    home = f"{RESULTS}/models/{wildcards.model}"
    if settings.get("path") != home:
        raise WorkflowError(f"models.{wildcards.model}.path must be {home!r}: the workflow builds its organism there")
    return f"{home}/readout_accuracy.json"


def pair_flags():
    """CLI flags that choose the source/target pairs, the patching direction and the readout positions."""
    p = config["patching"]
    subsample = f"--max-pairs {p['max_pairs']}" if p["max_pairs"] else ""
    return f"--direction {p['direction']} --seed {config['seed']} --message-positions {p['message_positions']} {subsample}"


def steering_flags():
    """CLI flags both steering jobs share: the item split's seed, the measured prompts, the nulls, the bootstrap."""
    s = config["steering"]
    subsample = f"--max-prompts {s['max_prompts']}" if s["max_prompts"] else ""
    return f"--seed {config['seed']} --n-random {s['n_random']} --n-boot {s['n_boot']} {subsample}"


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
        jobs.append(("readout", m, None, f"{RESULTS}/readout/{m}.json"))
        jobs.append(("vectors", m, None, f"{RESULTS}/emotion_vectors/{m}_vectors.pkl"))
        for a, b in chunk_ranges(n_layers(m), config["models"][m]["layer_chunk"]):
            chunk = chunk_name(a, b).removesuffix(".pkl")
            jobs.append(("residual_chunk", m, chunk, f"{RESULTS}/patching/residual/chunks/{m}/{chunk}.pkl"))
        jobs.append(("residual_merge", m, None, f"{RESULTS}/patching/residual/{m}_residual_sweep.pkl"))
        jobs.append(("screen_heads", m, None, f"{RESULTS}/screening/head_scores_{m}.json"))
        jobs.append(("patch_heads", m, None, f"{RESULTS}/patching/head/{m}_head_patching.pkl"))
        jobs.append(("steer", m, None, f"{RESULTS}/steering/{m}.json"))
    jobs += [("align_pair", p, None, f"{RESULTS}/alignment/{p}.pkl") for p in PAIRS]
    jobs += [("steer_transfer", m, None, f"{RESULTS}/steering/transfer/into_{m}.json") for m in TRANSFER_TARGETS]
    jobs += [(f"stats_{mode}", None, None, f"{RESULTS}/statistics/{mode}.json") for mode in STATISTICS]
    return [
        {"rule": r, "model": m, "chunk": c, "output": out,
         "benchmark": f"{RESULTS}/benchmarks/{r}/{m or 'all'}{f'__{c}' if c else ''}.tsv"}
        for r, m, c, out in jobs
    ]


def phase_outputs():
    """The outputs of phases 3-7 and of the readout baseline: what verification checks and the figures draw."""
    return [
        *per_model(f"{RESULTS}/readout/{{model}}.json"),
        *per_model(f"{RESULTS}/emotion_vectors/{{model}}_vectors.pkl"),
        *per_model(f"{RESULTS}/patching/residual/{{model}}_residual_sweep.pkl"),
        *per_model(f"{RESULTS}/screening/head_scores_{{model}}.json"),
        *per_model(f"{RESULTS}/patching/head/{{model}}_head_patching.pkl"),
        *([f"{RESULTS}/alignment/summary.json"] if CROSS_MODEL else []),
        *per_model(f"{RESULTS}/steering/{{model}}.json"),
        *([f"{RESULTS}/steering/transfer/summary.json"] if TRANSFER_TARGETS else []),
        *expand(f"{RESULTS}/statistics/{{mode}}.json", mode=STATISTICS),
    ]


def organisms_json():
    """The demo organisms' width and depth by model, as JSON: the figures label them as organisms, not the real models."""
    organisms = {m: s["organism"] for m, s in config["models"].items() if "organism" in s}
    return json.dumps({m: {"d_model": o["d_model"], "n_layers": o["n_layers"]} for m, o in organisms.items()})


def all_targets():
    """Every final output: verification (which needs every phase), timing and the report's figures."""
    return [f"{RESULTS}/verification.json", f"{RESULTS}/findings.md", f"{RESULTS}/timing/phase_timings.jsonl",
            *expand(f"{RESULTS}/figures/{{name}}.png", name=FIGURES)]
