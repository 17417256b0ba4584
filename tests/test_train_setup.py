"""What a run does on a device is a pure function of (TrainConfig, DevicePlan): a table over methods × devices ×
precisions. The case that used to be wrong: QLoRA dropped gradient checkpointing while the estimator counted it."""
from __future__ import annotations

import itertools

import pytest

from core.estimate import plan_for_config
from core.train.config import TrainConfig
from core.train.device import DevicePlan
from core.train.setup import effective_setup, trainer_arguments

METHODS = ("lora", "qlora", "full")
DEVICES = (("cpu", "fp32"), ("cuda", "bf16"), ("cuda", "fp16"), ("cuda", "fp32"))


@pytest.mark.parametrize("method,device_precision,checkpointing,packing",
                         list(itertools.product(METHODS, DEVICES, (False, True), (True, False))))
def test_trainer_arguments_table(method, device_precision, checkpointing, packing):
    device, precision = device_precision
    cfg = TrainConfig(dataset="x", method=method, gradient_checkpointing=checkpointing, packing=packing,
                      save_steps=0, save_total_limit=3)
    plan = DevicePlan(device, precision, f"{device} (test)")
    args = trainer_arguments(cfg, plan, output_dir="/tmp/x", has_eval=False)
    assert args["activation_checkpointing"] is checkpointing  # for every method, QLoRA included
    assert (args["activation_checkpointing_kwargs"] == {"use_reentrant": False}) is checkpointing
    assert args["bf16"] is (precision == "bf16") and args["fp16"] is (precision == "fp16")
    assert args["use_cpu"] is (device == "cpu")
    assert args["save_total_limit"] is None  # rotation is ours: only complete checkpoints are counted
    assert args["save_steps"] == 10**9  # save_steps 0 = only at the end
    assert args["padding_free"] is False and args["eval_strategy"] == "no"
    setup = effective_setup(cfg, plan)
    line = setup.line()
    assert f"gradient checkpointing {'on' if checkpointing else 'off'}" in line
    assert f"packing {'on' if packing else 'off'}" in line and f"method {method}" in line
    assert setup.attention == ("fts_packed_sdpa" if packing else "sdpa")
    assert setup.load_dtype == ("fp32" if precision == "fp16" else precision)  # fp16 AMP keeps fp32 masters
    assert ("LoRA r=16 on all-linear" in line) is (method != "full")
    assert ("4-bit NF4" in line) is (method == "qlora")
    # the estimator plans exactly what the worker will do
    est_plan = plan_for_config(cfg, device=device, bf16_supported=precision == "bf16")
    assert est_plan.gradient_checkpointing is checkpointing and est_plan.method == method


def test_sft_config_takes_the_arguments_as_given():
    """TRL's SFTConfig defaults gradient checkpointing to on; ours says exactly what the config says."""
    from trl import SFTConfig

    for flag in (False, True):
        cfg = TrainConfig(dataset="x", method="qlora", gradient_checkpointing=flag)
        args = SFTConfig(**trainer_arguments(cfg, DevicePlan("cpu", "fp32", "cpu"), output_dir="/tmp/x",
                                             has_eval=False))
        assert args.activation_checkpointing is flag and args.gradient_checkpointing is flag


def test_eval_only_when_there_is_something_to_evaluate():
    cfg = TrainConfig(dataset="x", eval_steps=5)
    plan = DevicePlan("cpu", "fp32", "cpu")
    assert trainer_arguments(cfg, plan, output_dir="o", has_eval=True)["eval_strategy"] == "steps"
    assert trainer_arguments(cfg, plan, output_dir="o", has_eval=False)["eval_strategy"] == "no"
