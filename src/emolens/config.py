"""Configuration: one YAML file per profile, checked against the JSON schema the workflow validates with.

The same schema serves Snakemake's ``validate`` (workflow/schemas/ links to it) and the plain CLI,
so a typo or a wrong type is named the same way wherever the config is read.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class ConfigError(ValueError):
    """The configuration breaks the schema; the message names the key."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded as configured; the message names the setting to change."""


def schema() -> dict[str, Any]:
    """The config JSON schema shipped with the package."""
    return yaml.safe_load(resources.files("emolens").joinpath("schemas/config.schema.yaml").read_text())


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


def validate(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Fill defaults and check ``config``; raise ConfigError naming the offending key."""
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"{source}: {key}: {error.message}")
    return config


def first_error(config: dict[str, Any], source: str) -> str:
    """The one-line message of the config's first schema error (for the workflow's own validate)."""
    try:
        validate(copy.deepcopy(config), source)
    except ConfigError as e:
        return str(e)
    return f"{source}: invalid config"


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a profile YAML and validate it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    return validate(yaml.safe_load(path.read_text()) or {}, source=str(path))
