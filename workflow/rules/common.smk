# The one place with logic: config reading, wildcard constraints, input and param functions.
import json

RESULTS = f"results/{config['profile']}"
MODELS = list(config["models"])


wildcard_constraints:
    model="|".join(MODELS),


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
        raise ValueError(f"models.{wildcards.model}.path must be {home!r}: the workflow builds its organism there")
    return f"{home}/readout_accuracy.json"


def all_targets():
    """Every final output of the phases included so far."""
    return expand(
        [
            f"{RESULTS}/emotion_vectors/{{model}}_vectors.pkl",
            f"{RESULTS}/emotion_subspaces/{{model}}_subspaces.pkl",
        ],
        model=MODELS,
    )
