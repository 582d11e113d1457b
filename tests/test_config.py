"""Configs: presets, --config.key=value overrides, and one-line errors naming the key at fault."""

import pytest

from olmo_jax.config import TrainConfig, load_config, preset_names, split_config_args
from olmo_jax.errors import ConfigError


def test_every_preset_of_the_product_card_is_shipped():
    assert {"tiny", "1b", "7b", "7b_twin_2t", "65b"} <= set(preset_names())


@pytest.mark.parametrize(
    "name, d_model, n_heads, n_layers, hidden, tied",
    [
        ("1b", 2048, 16, 16, 8192, True),
        ("7b", 4096, 32, 32, 11008, False),
        ("7b_twin_2t", 4096, 32, 32, 11008, False),
        ("65b", 8192, 64, 80, 22016, False),
    ],
)
def test_presets_carry_olmo_shapes(name, d_model, n_heads, n_layers, hidden, tied):
    model = load_config(name).model
    assert (model.d_model, model.n_heads, model.n_layers) == (d_model, n_heads, n_layers)
    assert model.hidden_size == hidden
    assert model.weight_tying is tied
    assert (model.vocab_size, model.padded_vocab_size) == (50280, 50304)
    assert (model.eos_token_id, model.pad_token_id) == (50279, 1)


def test_overrides_are_typed_from_the_dataclass_fields():
    config = load_config(
        "tiny",
        {
            "optimizer.learning_rate": "3e-4",  # YAML would read this as a string; the field says float
            "model.n_layers": "2",
            "model.weight_tying": "false",
            "data.paths": '["a.npy", "b.npy"]',
            "max_duration": "1000",  # stays a string: the field also accepts "2e12T"
            "model.clip_qkv": "null",
            "optimizer.betas": "[0.9, 0.99]",
        },
    )
    assert config.optimizer.learning_rate == 3e-4
    assert config.model.n_layers == 2 and config.model.weight_tying is False
    assert config.data.paths == ["a.npy", "b.npy"]
    assert config.max_duration == "1000"
    assert config.model.clip_qkv is None
    assert config.optimizer.betas == (0.9, 0.99)


def test_unknown_key_is_an_error_naming_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.d_modle'.*d_model"):
        load_config("tiny", {"model.d_modle": "64"})


def test_invalid_choice_lists_the_valid_choices():
    with pytest.raises(ConfigError, match=r"scheduler\.name.*'linear_with_warmup'.*'cosine_with_warmup'"):
        load_config("tiny", {"scheduler.name": "exponential"})


def test_invalid_number_names_the_key():
    with pytest.raises(ConfigError, match=r"model\.n_heads"):
        load_config("tiny", {"model.n_heads": "four"})


def test_inconsistent_model_shape_is_rejected():
    with pytest.raises(ConfigError, match=r"d_model=256 is not divisible by model\.n_heads=3"):
        load_config("tiny", {"model.n_heads": "3"})


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match=r"unknown config 'huge'.*tiny"):
        load_config("huge")


def test_our_yaml_file_with_a_typo_is_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  d_model: 64\n  n_heads: 4\nglobal_train_batch_sise: 8\n")
    with pytest.raises(ConfigError, match="global_train_batch_sise"):
        load_config(str(path))


def test_our_yaml_file_loads(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  d_model: 64\n  n_heads: 4\nglobal_train_batch_size: 8\n")
    config = load_config(str(path), {"seed": "7"})
    assert isinstance(config, TrainConfig)
    assert (config.model.d_model, config.global_train_batch_size, config.seed) == (64, 8, 7)


def test_command_line_split_accepts_both_spellings():
    config, overrides, rest = split_config_args(
        ["--config=7b", "--config.seed", "3", "--config.model.n_layers=2", "--workdir=/tmp/x"]
    )
    assert config == "7b"
    assert overrides == {"seed": "3", "model.n_layers": "2"}
    assert rest == ["--workdir=/tmp/x"]
