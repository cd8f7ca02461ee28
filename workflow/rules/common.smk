# The one place with logic: config reading, wildcard constraints, input and param functions.
import itertools
import json

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from emolens import EMOTIONS, layout
from emolens.data.dataset import DatasetError, check_emotions, declared_emotions
from emolens.model.architecture import known_architectures, resolve_architecture
from emolens.engine.chunks import chunk_name, chunk_ranges

RESULTS = layout.root(config["profile"])  # every result path comes from emolens.layout
BUILT_DATASET = layout.dataset(RESULTS)  # the workflow's own dataset, one copy per profile
config["dataset"] = config.get("dataset") or str(BUILT_DATASET)  # a user's own JSONL is used as it is
TWINS = {m: s["twin_of"] for m, s in config["models"].items() if s.get("twin_of")}  # ceiling twin -> its model
MODELS = [m for m in config["models"] if m not in TWINS]  # the models every phase runs
ALL_MODELS = MODELS + list(TWINS)  # a twin runs its checks and activations only
for _twin, _of in TWINS.items():
    if _of not in MODELS:
        raise WorkflowError(f"models.{_twin}.twin_of: {_of!r} is not one of the profile's models {MODELS}")
WORDS = "words"  # the words reference: the prompts' words as a one-layer model (emolens.phases.words)
PAIRS = [f"{a}__{b}" for a, b in itertools.combinations(MODELS, 2)]
# every alignment file: model pairs, each model against the words reference, each twin against its model (a ceiling)
ALIGN_PAIRS = PAIRS + [f"{m}__{WORDS}" for m in MODELS] + [f"{of}__{twin}" for twin, of in TWINS.items()] if PAIRS else []
TRANSFER_TARGETS = MODELS if len(MODELS) > 1 else []  # steering transfer into each model from every other one
CROSS_MODEL = len(MODELS) > 1  # alignment, its summary, k and steering transfer compare two models or more
if not CROSS_MODEL:
    logger.info(f"One model ({MODELS[0]}): the cross-model phases (alignment pairs and summary, statistics/k, "
                "steering transfer) have nothing to pair and are skipped; verification says so.")
STATISTICS = ["effect", "power", "k"] if CROSS_MODEL else ["effect", "power"]  # phase-7 outputs
# The report's figures (emolens.report.figures.FIGURES and, with two models or more, CROSS_MODEL_FIGURES), each
# with its caption in workflow/report/<name>.rst.
FIGURES = ["probe_accuracy", "residual_patching", "head_scores", "residual_effect_last_position", "readout_baseline",
           "steering_dose_response", "steering_specificity", "steering_ablation", "attention_vs_mlp"]
FIGURES += ["alignment", "steering_transfer"] if CROSS_MODEL else []
# Models the workflow fetches from the Hugging Face hub (no local path, not built here): pre-flight checks them first.
HUB_MODELS = [m for m, s in config["models"].items() if s.get("hf_id") and not s.get("path") and not s.get("gguf_file")]
PREFLIGHT = layout.preflight(RESULTS)
if HUB_MODELS and workflow.is_main_process and not os.path.exists(PREFLIGHT):
    from emolens.model.preflight import cached_checkpoint  # the local cache only: no network

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
    model="|".join(map(re.escape, ALL_MODELS)),
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


def refuse_other_emotions():
    """Before any job: a dataset whose emotions are not readout.labels' stops the workflow, naming both sets (the
    built dataset holds the built-in four; a user's JSONL not there yet, or unreadable, is left to its first job)."""
    path, built = config["dataset"], config["dataset"] == str(BUILT_DATASET)
    declared = declared_emotions(path) or (dict.fromkeys(EMOTIONS, path) if built else {})
    try:
        if declared:
            check_emotions(path, declared, config["readout"]["labels"])
    except DatasetError as e:
        hint = " (the workflow builds this dataset: set dataset to a JSONL of readout.labels' emotions)" if built else ""
        raise WorkflowError(f"{e}{hint}") from None


refuse_other_emotions()


def hub_models_json():
    """The hub models' download settings as JSON: what pre-flight checks (batch sizes and the like never rerun it)."""
    keys = ("hf_id", "revision", "dtype")
    return json.dumps({m: {k: config["models"][m].get(k) for k in keys} for m in HUB_MODELS})


def model_checkpoint(wildcards):
    """What a long model job waits for: every model's equivalence check (ancient: a rerun check reruns no job)."""
    return [ancient(layout.equivalence(RESULTS, m)) for m in ALL_MODELS]


def model_source(wildcards):
    """What the equivalence check waits for before it loads the model: the organism's readout record when the
    workflow builds the model itself; the pre-flight report for a hub model (ancient: rerunning pre-flight, e.g.
    after a model is added, reruns no model job); else nothing."""
    settings = config["models"][wildcards.model]
    if wildcards.model in HUB_MODELS:
        return ancient(PREFLIGHT)
    if "organism" not in settings:
        return []
    home = str(layout.model_dir(RESULTS, wildcards.model))
    if settings.get("path") != home:
        raise WorkflowError(f"models.{wildcards.model}.path must be {home!r}: the workflow builds its organism there")
    return layout.organism_readout(RESULTS, wildcards.model)


def pair_flags():
    """CLI flags that choose the source/target pairs, the patching direction and the readout positions (a null
    max_pairs is passed as None: all pairs)."""
    p = config["patching"]
    return (f"--direction {p['direction']} --seed {config['seed']} --message-positions {p['message_positions']} "
            f"--max-pairs {p['max_pairs']}")


def steering_flags():
    """CLI flags both steering jobs share: the item split's seed, the measured prompts (a null max_prompts is passed
    as None: the whole held-out half), the nulls, the bootstrap."""
    s = config["steering"]
    return f"--seed {config['seed']} --n-null {s['n_null']} --n-boot {s['n_boot']} --max-prompts {s['max_prompts']}"


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
        layout.residual_chunks(RESULTS, wildcards.model) / chunk_name(a, b)
        for a, b in chunk_ranges(n_layers(wildcards.model), size)
    ]


def pair_kind(pair):
    """An alignment file's kind: models, words (b is the words reference) or ceiling (b is a's twin)."""
    b = pair.split("__")[1]
    return "words" if b == WORDS else "ceiling" if b in TWINS else "models"


def pair_inputs(wildcards):
    """Activations of the two sides of an alignment file; for two models also their vectors and subspaces (the
    descriptive numbers) and the words reference (the words-controlled section)."""
    a, b = wildcards.pair.split("__")
    inputs = {"activations": [layout.activations(RESULTS, m) for m in (a, b)]}
    if pair_kind(wildcards.pair) == "models":
        inputs |= {"vectors": [layout.vectors(RESULTS, m) for m in (a, b)],
                   "subspaces": [layout.subspaces(RESULTS, m) for m in (a, b)],
                   "words": layout.activations(RESULTS, WORDS)}
    return inputs


def align_flags(wildcards, input):
    """The align command's flags for one alignment file: its kind and the optional inputs it has."""
    flags = f"--kind {pair_kind(wildcards.pair)}"
    if "words" in input.keys():
        flags += f" --vectors {input.vectors} --subspaces {input.subspaces} --words {input.words}"
    return flags


def per_model(pattern):
    """One path per model."""
    return expand(pattern, model=MODELS)


def timed_jobs():
    """Every timed job: rule, model, chunk, its benchmark file and its output."""
    jobs = []
    for m in ALL_MODELS:
        if "organism" in config["models"][m]:
            jobs.append(("organism", m, None, layout.organism_readout(RESULTS, m)))
        jobs.append(("activations", m, None, layout.activations(RESULTS, m)))
    for m in MODELS:
        jobs.append(("vectors", m, None, layout.vectors(RESULTS, m)))
        for a, b in chunk_ranges(n_layers(m), config["models"][m]["layer_chunk"]):
            chunk = chunk_name(a, b).removesuffix(".pkl")
            jobs.append(("residual_chunk", m, chunk, layout.residual_chunks(RESULTS, m) / f"{chunk}.pkl"))
        jobs.append(("residual_merge", m, None, layout.residual_sweep(RESULTS, m)))
        jobs.append(("screen_heads", m, None, layout.head_scores(RESULTS, m)))
        jobs.append(("patch_heads", m, None, layout.head_patching(RESULTS, m)))
        jobs.append(("sublayers", m, None, layout.sublayers(RESULTS, m)))
        jobs.append(("steer", m, None, layout.steering(RESULTS, m)))
    jobs += [("align_pair", p, None, layout.alignment_pair(RESULTS, p)) for p in ALIGN_PAIRS]
    jobs += [("steer_transfer", m, None, layout.steering_transfer(RESULTS, m)) for m in TRANSFER_TARGETS]
    jobs += [(f"stats_{mode}", None, None, layout.statistics(RESULTS, mode)) for mode in STATISTICS]
    return [
        {"rule": r, "model": m, "chunk": c, "output": str(out),
         "benchmark": str(layout.benchmark(RESULTS, r, f"{m or 'all'}{f'__{c}' if c else ''}"))}
        for r, m, c, out in jobs
    ]


def phase_outputs():
    """The outputs of phases 3-7 and of the readout baseline: what verification checks and the figures draw."""
    return [
        *per_model(layout.readout(RESULTS, "{model}")),
        *per_model(layout.vectors(RESULTS, "{model}")),
        *per_model(layout.residual_sweep(RESULTS, "{model}")),
        *per_model(layout.head_scores(RESULTS, "{model}")),
        *per_model(layout.head_patching(RESULTS, "{model}")),
        *per_model(layout.sublayers(RESULTS, "{model}")),
        *([layout.alignment_summary(RESULTS)] if CROSS_MODEL else []),
        *per_model(layout.steering(RESULTS, "{model}")),
        *([layout.steering_transfer_summary(RESULTS)] if TRANSFER_TARGETS else []),
        *expand(layout.statistics(RESULTS, "{mode}"), mode=STATISTICS),
    ]


def organisms_json():
    """The demo organisms' width and depth by model, as JSON: the figures label them as organisms, not the real models."""
    organisms = {m: s["organism"] for m, s in config["models"].items() if "organism" in s}
    return json.dumps({m: {"d_model": o["d_model"], "n_layers": o["n_layers"]} for m, o in organisms.items()})


def all_targets():
    """Every final output: verification (which needs every phase), timing and the report's figures."""
    return [layout.verification(RESULTS), layout.findings(RESULTS), layout.timing(RESULTS),
            *expand(layout.figure(RESULTS, "{name}"), name=FIGURES)]
