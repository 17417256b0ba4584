"""The job configs' one contract (core.jobconfig): a field written once gives the form its widget, the CLI its flag,
one error format; the flags people type today keep working. Unit tests: no app, no model."""
import typing

import gradio as gr
import pytest

from core.__main__ import build_parser
from core.deploy.config import DeployConfig, ExportConfig
from core.evaluate.config import EvalConfig, EvalConfigError
from core.jobconfig import ConfigError, base_type, choices_of, flag_of, form_fields, int_fields
from core.runs.errors import JobError
from core.train.config import TrainConfig


def _sample(model, name):
    """Command-line words giving the field a value its type accepts."""
    tp = base_type(model.model_fields[name])
    if tp is bool:
        return []
    if choices_of(model, name):
        return [str(choices_of(model, name)[-1])]
    return {int: ["3"], float: ["0.5"], list: ["a", "b"]}.get(tp, ["x"])


def test_every_form_field_has_a_widget_and_a_cli_flag():
    """'One field': each TrainConfig field placed on the Train form (by its metadata) gets its widget there, labelled
    as the metadata says, and a `python -m core train` flag that sets it."""
    from ui.train_form import build_form

    placed = form_fields(TrainConfig)
    assert len(placed) >= 30  # the form's fields come from the metadata, not from a list here
    with gr.Blocks():
        inputs, *_ = build_form()
    assert set(inputs) - set(placed) == {"upload"} and set(placed) <= set(inputs)
    for name, meta in placed.items():
        assert inputs[name].label == meta["label"], name
        if name in int_fields(TrainConfig) and isinstance(inputs[name], gr.Number):
            assert inputs[name].precision == 0, name  # whole numbers, from the type
        if typing.get_origin(base_type(TrainConfig.model_fields[name])) is typing.Literal:
            assert [c[1] for c in inputs[name].choices] == choices_of(TrainConfig, name), name
    parser = build_parser()
    for name in placed:
        args = parser.parse_args(["train", flag_of(TrainConfig, name), *_sample(TrainConfig, name)])
        assert getattr(args, name) is not None, name
        assert name in args.config_fields


def test_form_values_become_a_config():
    """Int coercion from the types, GRPO-only fields dropped for another objective, a typed list split."""
    from ui.train_form import config_from_inputs

    cfg = config_from_inputs({"dataset": "4", "batch_size": 2.0, "seed": 7.0, "num_generations": 8.0,
                              "lora_target_modules": "q_proj,\nv_proj", "upload": None})
    assert (cfg.batch_size, type(cfg.batch_size), cfg.seed) == (2, int, 7)
    assert cfg.num_generations == 4  # the GRPO box's value is ignored for SFT
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    grpo = config_from_inputs({"dataset": "4", "objective": "grpo", "beta": 0.0, "num_generations": 8.0})
    assert grpo.num_generations == 8


def test_documented_flags_still_parse():
    """The README's flags for train, evaluate, export and deploy (issue 26 generated them from the configs)."""
    p = build_parser()
    a = p.parse_args(["train", "--config", "run.yaml", "--base-model", "m", "--chat-template", "chatml", "--dataset",
                      "3", "--max-steps", "5", "--wait", "--json"])
    assert (a.config, a.base_model, a.chat_template, a.dataset, a.max_steps, a.wait) == ("run.yaml", "m", "chatml",
                                                                                          "3", 5, True)
    a = p.parse_args(["evaluate", "--run", "4", "--dataset", "2", "--split", "test", "--limit", "0", "--style",
                      "native", "--native-task", "hellaswag", "--num-fewshot", "2", "--fewshot-split", "train",
                      "--multiple-choice", "--seed", "1", "--max-new-tokens", "9", "--batch-size", "3",
                      "--lm-eval-task", "arc_easy", "--json"])
    assert (a.run_id, a.mc_style, a.mc_task, a.fewshot_split, a.limit, a.multiple_choice) == (4, "native",
                                                                                             "hellaswag", "train", 0,
                                                                                             True)
    a = p.parse_args(["evaluate", "--model", "/x", "--base", "default", "--dataset", "1"])
    assert (a.tuned, a.base, a.seed) == ("/x", "default", None)  # unset: EvalConfig's default applies
    a = p.parse_args(["export", "--run", "3", "--format", "hub", "--quant", "q8_0", "--out", "/o", "--repo-id",
                      "me/x", "--public", "--push-adapter", "--merge", "--json"])
    assert ExportConfig.from_dict({k: getattr(a, k) for k in a.config_fields if getattr(a, k) is not None}) == \
        ExportConfig(run_id=3, format="hub", quant="q8_0", out_dir="/o", repo_id="me/x", private=False,
                     push_adapter=True)
    a = p.parse_args(["export", "--run", "3"])
    assert a.private is None  # not given: private, ExportConfig's default
    a = p.parse_args(["deploy", "--run", "3", "--target", "vllm", "--dry-run", "--port", "8001", "--gpu", "a10g",
                      "--num-gpus", "2", "--quantize-4bit", "--keep-adapter", "--timeout", "9", "--smoke", "--json"])
    cfg = DeployConfig.from_dict({k: getattr(a, k) for k in a.config_fields if getattr(a, k) is not None})
    assert (cfg.model_ref(), cfg.target, cfg.port, cfg.num_gpus, cfg.quantize_4bit, cfg.timeout_s) == (
        "run:3", "vllm", 8001, 2, True, 9.0)
    with pytest.raises(SystemExit):
        p.parse_args(["deploy", "--target", "docker"])  # choices from the Literal


def test_one_error_format():
    with pytest.raises(EvalConfigError, match=r"^invalid evaluation: spam: unknown field \(check the spelling\)$"):
        EvalConfig.from_dict({"run_id": 1, "spam": 1})
    with pytest.raises(JobError, match="^invalid export: run_id: Field required$"):
        ExportConfig.from_dict({})
    with pytest.raises(ConfigError, match=r"^invalid deployment: port: port must be between 1 and 65535 \(got 0\)$"):
        DeployConfig.from_dict({"port": 0})
    with pytest.raises(ConfigError, match="not both"):
        DeployConfig.from_dict({"run_id": 1, "model": "x"})
    assert issubclass(EvalConfigError, ConfigError) and DeployConfig.from_dict({}).model_ref() == "default"
