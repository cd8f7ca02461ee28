"""The config schema: defaults filled, typos and wrong types named by key."""

from pathlib import Path

import pytest
import yaml

from emolens.config import ConfigError, coerce_overrides, load_config, validate


def test_profiles_validate_with_defaults():
    for path in sorted(map(str, Path("config").glob("*.yaml"))):  # every shipped profile (lint checks two)
        config = load_config(path)
        assert config["patching"]["direction"] == "denoising"
        for settings in config["models"].values():
            assert settings["batch_size"] >= 1 and "layer_chunk" in settings
    assert load_config("config/config.yaml")["models"]["gemma3_12b"]["quantization"] == "int8"


def _demo():
    return yaml.safe_load(open("config/demo.yaml"))


def test_unknown_key_is_named():
    config = _demo()
    config["models"]["gpt2_small"]["batch_sise"] = 4
    with pytest.raises(ConfigError, match=r"models\.gpt2_small: .*'batch_sise' was unexpected"):
        validate(config)


def test_wrong_type_is_named():
    config = _demo()
    config["patching"]["message_positions"] = "six"
    with pytest.raises(ConfigError, match=r"patching\.message_positions: 'six' is not of type 'integer'"):
        validate(config)


def test_model_needs_a_source():
    config = _demo()
    del config["models"]["gpt2_small"]["path"]
    with pytest.raises(ConfigError, match=r"models\.gpt2_small"):
        validate(config)


def test_command_line_error_is_reported_as_from_the_command_line():
    config = _demo()
    overrides = {"seeed": 1}
    config.update(overrides)
    with pytest.raises(ConfigError, match=r"^--config: \(top level\): .*'seeed' was unexpected"):
        validate(config, "config/demo.yaml", overrides)
    config = _demo()
    config["patching"]["message_positions"] = "six"
    with pytest.raises(ConfigError, match=r"^--config: patching\.message_positions: 'six'"):
        validate(config, "config/demo.yaml", {"patching": {"message_positions": "six"}})
    config = _demo()  # a fault of the file stays the file's, whatever else the command line set
    config["patching"]["message_positionz"] = 4
    with pytest.raises(ConfigError, match=r"^config/demo\.yaml: patching: .*'message_positionz'"):
        validate(config, "config/demo.yaml", {"patching": {"n_boot": 100}, "seed": 3})


def test_nested_command_line_values_are_read_as_yaml_where_the_schema_wants_no_string():
    # What Snakemake makes of --config 'patching={message_positions: 2, max_pairs: null}' 'steering={alphas: [0, 1]}'
    # 'readout={suffix: " is"}' 'models={gpt2_small: {batch_size: 8}}': every nested leaf a string.
    overrides = {"patching": {"message_positions": "2", "max_pairs": "null"}, "steering": {"alphas": ["0", "1"]},
                 "readout": {"suffix": " is"}, "models": {"gpt2_small": {"batch_size": "8"}}}
    config = _demo()
    for section, values in overrides.items():
        for key, value in values.items():
            config[section][key] = value if section != "models" else {**config["models"][key], **value}
    coerce_overrides(config, overrides)
    validate(config, "config/demo.yaml", overrides)
    assert config["patching"]["message_positions"] == 2 and config["patching"]["max_pairs"] is None
    assert config["steering"]["alphas"] == [0, 1] and config["readout"]["suffix"] == " is"  # strings stay as given
    assert config["models"]["gpt2_small"]["batch_size"] == 8


def test_file_values_are_not_coerced():
    config = _demo()
    config["models"]["gpt2_small"]["batch_size"] = "64"  # quoted in the YAML file: the file is wrong
    coerce_overrides(config, {})
    with pytest.raises(ConfigError, match=r"models\.gpt2_small\.batch_size: '64' is not of type 'integer'"):
        validate(config, "config/demo.yaml", {})
