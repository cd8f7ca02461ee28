"""The config schema: defaults filled, typos and wrong types named by key."""

import pytest
import yaml

from emolens.config import ConfigError, load_config, validate


def test_profiles_validate_with_defaults():
    for path in ("config/config.yaml", "config/demo.yaml"):
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
    config["patching"]["n_positions"] = "six"
    with pytest.raises(ConfigError, match=r"patching\.n_positions: 'six' is not of type 'integer'"):
        validate(config)


def test_model_needs_a_source():
    config = _demo()
    del config["models"]["gpt2_small"]["path"]
    with pytest.raises(ConfigError, match=r"models\.gpt2_small"):
        validate(config)
