"""Estimate tab: builds inside Blocks, one click returns every table, bad input becomes a message (no traceback)."""
from __future__ import annotations

import gradio as gr

from ui import estimate as ui

ARGS = dict(catalog_model="Mistral-7B-v0.1", model_ref="", method="qlora", lora_r=16, lora_targets="all-linear",
            optimizer="adamw", precision="auto", batch_size=2, seq_len=1024, gradient_checkpointing=True,
            attention="sdpa", inference_dtype="int4", inference_tokens=4096, dataset_id="", tokens=2_000_000, epochs=1,
            gpu="t4", mfu=0.35, price="")


def test_build_tab_inside_blocks(workspace):
    with gr.Blocks() as demo:
        with gr.Tab("Estimate"):
            ui.build_tab()
    assert demo is not None


def test_run_estimate_outputs():
    summary, components, phases, inference, fit, time_md = ui.run_estimate(**ARGS)
    assert "Training peak" in summary and "accelerate-style" in summary
    assert any(row[0] == "Model weights" for row in components) and all(len(r) == 5 for r in components)
    assert any(row[0].startswith("▶") for row in phases)
    assert inference[-1][0] == "Total"
    assert {row[0] for row in fit} >= {"NVIDIA T4 16 GB", "NVIDIA H200 141 GB"}
    assert "2,000,000 tokens" in time_md and "$" in time_md


def test_run_estimate_bad_input_is_a_message():
    for bad in (dict(batch_size=0), dict(model_ref="./no/such/dir"), dict(lora_targets="nope_proj"),
                dict(tokens=-3), dict(seq_len="abc")):
        summary, *_ = ui.run_estimate(**{**ARGS, **bad})
        assert summary.startswith("### ⚠️"), bad
        assert "Traceback" not in summary


def test_dataset_without_token_stats(workspace):
    from core.config import db_session
    from storage import Dataset

    with db_session() as s:
        s.add(Dataset(name="raw", content_hash="x", meta={}))
    *_, time_md = ui.run_estimate(**{**ARGS, "dataset_id": "1", "tokens": None})
    assert "no token stats" in time_md
    choices = ui._dataset_choices()
    assert any(value == "1" for _label, value in choices)


def test_prompt_template_adds_the_new_token_line():
    labels = dict(ui._template_choices())
    assert labels["ChatML (+2 new tokens)"] == "chatml"
    assert labels["Alpaca-style plain text (no new tokens)"] == "alpaca"
    assert ui._template_choices()[0][1] == ""  # the model's own
    own = ui.run_estimate(**ARGS)
    chatml = ui.run_estimate(**ARGS, prompt_template="chatml")
    alpaca = ui.run_estimate(**ARGS, prompt_template="alpaca")
    labels_of = lambda rows: [r[0] for r in rows]
    assert not any("New-token" in label for label in labels_of(own[1]))
    assert "New-token embedding rows (2 tokens, trainable tokens)" in labels_of(chatml[1])
    assert any("merged V×h" in label for label in labels_of(chatml[1]))
    assert labels_of(alpaca[1]) == labels_of(own[1])

    def peak(summary: str) -> float:
        import re

        return float(re.search(r"Training peak \(ours\).*?\| \*\*([\d,.]+)\*\*", summary).group(1).replace(",", ""))

    assert peak(chatml[0]) > peak(own[0]) == peak(alpaca[0])
    assert "+2 new-token embedding row" in chatml[0] and "Prompt template** alpaca: no new tokens" in alpaca[0]


def test_processes_show_the_per_device_peak_beside_the_one_device_peak():
    """2 devices: DDP holds more than one device's peak (a whole copy + gradient buckets), FSDP less (sharded); the
    figure is the one the CLI's report computes; several processes without a strategy are DDP, as in training."""
    from core import estimate as est

    args = {**ARGS, "method": "full", "precision": "bf16", "gpu": "a100-80"}
    spec = est.load_model_spec("Mistral-7B-v0.1")
    plan = est.TrainingPlan(method="full", precision="bf16", batch_size=2, seq_len=1024, gradient_checkpointing=True)
    one_gb = f"**{ui._gb(est.estimate_training_memory(spec, plan).peak_bytes)}**"
    assert "per device" not in ui.run_estimate(**args)[0]  # one process: the one figure
    for strategy in ("ddp", "fsdp"):
        summary = ui.run_estimate(**args, num_processes=2, distributed=strategy)[0]
        per_device = est.estimate_report(spec, plan, num_processes=2, distributed=strategy)["per_device_peak_bytes"]
        row = next(line for line in summary.splitlines() if "per device" in line)
        assert f"{strategy.upper()} over 2" in row and row.endswith(f"**{ui._gb(per_device)}** |")
        assert one_gb in summary  # the one-device peak stays beside it
        single = est.estimate_training_memory(spec, plan).peak_bytes
        assert (per_device > single) if strategy == "ddp" else (per_device < single / 1.5)
    assert "DDP over 2" in ui.run_estimate(**args, num_processes=2, distributed="none")[0]
    bad, *_ = ui.run_estimate(**args, num_processes=1.5, distributed="ddp")  # (an empty box sends 0: one)
    assert bad.startswith("### ⚠️") and "processes" in bad
