"""TrainConfig: the one contract. Nonsense hyperparameters give messages that name the field."""
import pytest

from core.train.config import ConfigError, TrainConfig


def test_yaml_round_trip_keeps_every_field():
    cfg = TrainConfig(dataset="3", method="qlora", lora_r=8, lora_target_modules=["q_proj", "v_proj"], max_steps=10)
    again = TrainConfig.from_yaml(cfg.to_yaml())
    assert again == cfg
    assert again.lora_target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("learning_rate", 0, "learning rate must be > 0"),
        ("learning_rate", -1e-4, "learning rate must be > 0"),
        ("lora_r", 0, "LoRA rank r must be at least 1"),
        ("max_length", 4, "max length must be at least 8"),
        ("batch_size", 0, "batch_size must be at least 1"),
        ("lora_dropout", 1.5, "lora_dropout must be in [0, 1)"),
        ("num_epochs", 0, "epochs must be > 0"),
        ("method", "dpo", "method"),
    ],
)
def test_nonsense_hyperparameters_are_rejected_with_the_field_named(field, value, needle):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"dataset": "x.json", field: value})
    assert needle in str(err.value)
    assert field in str(err.value)


def test_unknown_field_and_bad_yaml_are_explained():
    with pytest.raises(ConfigError, match="lerning_rate: unknown field"):
        TrainConfig.from_yaml("dataset: a.json\nlerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.from_yaml("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.from_yaml("- just\n- a list\n")
    with pytest.raises(ConfigError, match="dataset: Field required"):
        TrainConfig.from_yaml("method: lora\n")
