"""The config schema: defaults filled, typos and wrong types named by key."""

from pathlib import Path

import pytest
import yaml

from emolens.config import ConfigError, coerce_overrides, load_config, replace_labels, validate
from emolens.data.readout import LABEL_WORDS


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


THREE = {"joy": " joy", "sadness": " sadness", "fear": " fear"}


def test_readout_labels_are_any_two_emotions_or_more_the_built_in_four_by_default():
    config = _demo()
    del config["readout"]["labels"]
    assert validate(config)["readout"]["labels"] == LABEL_WORDS
    config = _demo()
    config["readout"]["labels"] = dict(THREE)
    assert validate(config)["readout"]["labels"] == THREE  # no built-in emotion filled in beside them
    config["readout"]["labels"] = {"joy": " joy"}
    with pytest.raises(ConfigError, match=r"readout\.labels: \{'joy': ' joy'\} does not have enough properties"):
        validate(config)
    config["readout"]["labels"] = {"joy": " joy", "fear": ""}
    with pytest.raises(ConfigError, match=r"readout\.labels\.fear: '' should be non-empty"):
        validate(config)


def test_one_label_word_for_two_emotions_is_refused_naming_them():
    shared = {"joy": " joy", "sadness": " joy", "fear": " joy", "calm": " calm"}
    config = _demo()
    config["readout"]["labels"] = dict(shared)
    with pytest.raises(ConfigError, match=r"^config/demo\.yaml: readout\.labels: joy, sadness and fear share the label "
                                          r"word ' joy'; each emotion needs its own$"):
        validate(config, "config/demo.yaml")
    with pytest.raises(ConfigError, match=r"^--config: readout\.labels: joy, sadness and fear share"):
        validate(config, "config/demo.yaml", {"readout": {"labels": shared}})


def test_the_last_layer_that_gives_the_labels_gives_them_whole(tmp_path):
    """Snakemake merges --configfile layers and --config key by key; the labels are a set, so they are replaced."""
    from snakemake.utils import update_config

    base, profile = tmp_path / "base.yaml", tmp_path / "profile.yaml"
    base.write_text(Path("config/demo.yaml").read_text())
    profile.write_text(yaml.safe_dump({"readout": {"labels": THREE}, "seed": 3}))
    config = yaml.safe_load(base.read_text())
    update_config(config, yaml.safe_load(profile.read_text()))
    assert len(config["readout"]["labels"]) == 7  # what Snakemake's merge alone makes of it
    replace_labels(config, [base, profile])
    assert config["readout"]["labels"] == THREE and config["seed"] == 3
    overrides = {"readout": {"labels": {"calm": " calm", "fear": " fear"}}}  # --config readout=... wins over both
    update_config(config, overrides)
    assert replace_labels(config, [base, profile], overrides)["readout"]["labels"] == {"calm": " calm", "fear": " fear"}
    unchanged = yaml.safe_load(base.read_text())
    assert replace_labels(unchanged, [base], {"seed": 1})["readout"]["labels"] == LABEL_WORDS
