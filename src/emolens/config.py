"""Configuration: one YAML file per profile, checked against the JSON schema the workflow validates with.

The same schema serves Snakemake's ``validate`` (workflow/schemas/ links to it) and the plain CLI,
so a typo or a wrong type is named the same way wherever the config is read.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class ConfigError(ValueError):
    """The configuration breaks the schema; the message names the key."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded as configured; the message names the setting to change."""


@lru_cache(maxsize=1)
def _parsed_schema() -> dict[str, Any]:
    return yaml.safe_load(resources.files("emolens").joinpath("schemas/config.schema.yaml").read_text())


def schema() -> dict[str, Any]:
    """The config JSON schema shipped with the package (parsed once per process; a fresh copy each call)."""
    return copy.deepcopy(_parsed_schema())


def default(key: str) -> Any:
    """The schema's default of a dotted config key, e.g. ``default("alignment.n_perm")``: the only default."""
    node: dict[str, Any] = {"properties": schema()["properties"]}
    for part in key.split("."):
        node = node["properties"][part]
    return node["default"]


def _with_defaults(validator_class: type) -> type:
    """A validator that fills ``default`` values, as Snakemake's validate does."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, sch):  # noqa: ANN001
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(prop, sub["default"])
        yield from validate_properties(validator, properties, instance, sch)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _offending_path(error: jsonschema.ValidationError) -> list[str]:
    """The keys that lead to the offending value; for an unexpected key, that key itself."""
    path = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        path += sorted(k for k in error.instance if k not in known)[:1]
    return path


def _within(path: list[str], overrides: Mapping[str, Any] | None) -> bool:
    """True when ``path`` leads to (or into) a value that ``overrides`` set."""
    node: Any = overrides
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
        if not isinstance(node, Mapping):
            return True
    return bool(path)


def validate(config: dict[str, Any], source: str = "config",
             overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fill defaults and check ``config``; raise ConfigError naming the offending key.

    ``overrides``: the values given on Snakemake's command line (``--config key=value``), already
    merged into ``config``; an error in one of them is reported as coming from ``--config``.
    """
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        if _within(_offending_path(error), overrides):
            source = "--config"
        raise ConfigError(f"{source}: {key}: {error.message}")
    return check_labels(config, source, overrides)


def label_clash(labels: Mapping[str, Any]) -> str | None:
    """The refusal of two emotions or more that share one label word (the readout could not tell them apart, and
    the schema cannot say it), naming the setting, the emotions and the word; None when every word is its own."""
    by_word: dict[Any, list[str]] = {}
    for emotion, word in labels.items():
        by_word.setdefault(word, []).append(emotion)
    shared = next((es for es in by_word.values() if len(es) > 1), None)
    if shared is None:
        return None
    return (f"readout.labels: {', '.join(shared[:-1])} and {shared[-1]} share the label word "
            f"{labels[shared[0]]!r}; each emotion needs its own")


def check_labels(config: dict[str, Any], source: str = "config",
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Refuse a validated config whose ``readout.labels`` give two emotions one word (:func:`label_clash`), with
    a ConfigError naming ``source`` (or ``--config`` where the command line gave the labels); return ``config``."""
    clash = label_clash(config["readout"]["labels"])
    if clash:
        raise ConfigError(f"{'--config' if _within(['readout', 'labels'], overrides) else source}: {clash}")
    return config


def first_error(config: dict[str, Any], source: str, overrides: Mapping[str, Any] | None = None) -> str:
    """The one-line message of the config's first schema error (for the workflow's own validate)."""
    try:
        validate(copy.deepcopy(config), source, overrides)
    except ConfigError as e:
        return str(e)
    return f"{source}: invalid config"


def _schema_types(sub: dict[str, Any]) -> set[str]:
    kind = sub.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def _coerce(value: Any, sub: dict[str, Any]) -> Any:
    """A string that Snakemake left unparsed, read as YAML when the schema wants something else."""
    if isinstance(value, str) and sub and "string" not in _schema_types(sub):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value  # validation names it
    if isinstance(value, list) and isinstance(sub.get("items"), dict):
        return [_coerce(v, sub["items"]) for v in value]
    return value


def coerce_overrides(config: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Read the nested ``--config`` values Snakemake left as strings as YAML scalars, where the schema
    wants a number, boolean, null or list.

    Snakemake parses a top-level ``--config seed=1`` as a number, but a nested one,
    ``--config 'patching={message_positions: 2}'``, with YAML's BaseLoader: every leaf a string ('2').
    Only values that came from the command line are touched, and only where the schema does not
    accept a string (a label word such as ' anger' keeps its space); a value of a YAML file is
    validated as written. ``config`` is changed in place and returned.
    """

    def walk(node: dict[str, Any], given: Mapping[str, Any], sub: dict[str, Any]) -> None:
        for key, value in given.items():
            if key not in node:
                continue
            child = sub.get("properties", {}).get(key)
            if child is None and isinstance(sub.get("additionalProperties"), dict):
                child = sub["additionalProperties"]
            child = child or {}
            if isinstance(value, Mapping) and isinstance(node[key], dict):
                walk(node[key], value, child)
            else:
                node[key] = _coerce(node[key], child)

    walk(config, overrides or {}, schema())
    return config


def replace_labels(config: dict[str, Any], configfiles: Sequence[str | Path],
                   overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Give ``readout.labels`` whole from the last layer that sets it: the ``--config`` values, else the last
    config file (in Snakemake's order).

    Snakemake merges its config layers key by key, but the labels are the run's set of emotions: a profile's
    three emotions merged into an earlier file's four would make a run of seven. ``config`` is changed in
    place and returned.
    """

    def labels(layer: Any) -> Any:
        readout = layer.get("readout") if isinstance(layer, Mapping) else None
        return readout.get("labels") if isinstance(readout, Mapping) else None

    layers = [yaml.safe_load(Path(f).read_text()) for f in configfiles] + [overrides]
    given = [found for found in map(labels, layers) if found is not None]
    if given and isinstance(config.get("readout"), dict):
        config["readout"]["labels"] = given[-1]
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a profile YAML and validate it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    return validate(yaml.safe_load(path.read_text()) or {}, source=str(path))
