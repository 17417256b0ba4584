"""Preference tuning (issue 13): DPO and ORPO on the SFT spine, with the embedded model on CPU.

The pair's log-probabilities from one padding-free row equal each sequence scored alone; a DPO run's reward margin
rises on the sample pairs, it stops with a checkpoint and resumes with the same reference; ORPO trains; a dataset
sent to the wrong objective is refused at submit with the objective that fits."""
from __future__ import annotations

import math

import pytest
import torch
from sqlmodel import select

from core import runs
from core.config import db_session
from core.data import import_dataset
from core.data.prepare import prepare_dataset
from core.runs import JobError
from core.train.config import ConfigError, TrainConfig
from core.train.jobs import submit_training
from core.train.preference import (
    REFERENCE_FILE,
    PairCollator,
    preference_loss,
    sequence_logps,
    tokenize_pairs,
)
from core.train.tokenize import IGNORE_INDEX
from storage import Run
from tests.conftest import FIXTURES, wait_until


@pytest.fixture(scope="module")
def pairs():
    return [r.row for r in prepare_dataset(str(FIXTURES / "dpo_en_demo.json")).rows]


def test_only_the_answer_carries_loss_and_identical_pairs_are_dropped_and_counted(tokenizer, pairs):
    rows = pairs[:2] + [{**pairs[2], "rejected": pairs[2]["chosen"]}]
    examples, counts = tokenize_pairs(tokenizer, rows, 4096)
    assert counts["identical"] == 1 and len(examples) == 2
    for ex, row in zip(examples, rows):
        for side in ("chosen", "rejected"):
            ids, labels = ex[f"{side}_ids"], ex[f"{side}_labels"]
            answer = tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
            assert row[side][0]["content"].strip()[:40] in answer  # the answer is what carries loss …
            assert row["prompt"][-1]["content"].strip()[:40] not in answer  # … never the prompt
    kept, counts = tokenize_pairs(tokenizer, rows, 4096, keep_identical=True)
    assert counts["identical"] == 1 and len(kept) == 3


@pytest.mark.parametrize("padding_free", [True, False])
def test_a_pair_batch_scores_each_sequence_as_if_alone(tokenizer, default_model_dir, pairs, padding_free):
    from transformers import AutoModelForCausalLM

    from core.train.attention import register

    register()
    model = AutoModelForCausalLM.from_pretrained(
        str(default_model_dir), dtype=torch.float32,
        attn_implementation="fts_packed_sdpa" if padding_free else "sdpa")
    examples, _ = tokenize_pairs(tokenizer, pairs[:3], 96)
    with torch.no_grad():
        sums, counts = sequence_logps(model, PairCollator(tokenizer.pad_token_id, padding_free)(examples))
        alone = []
        for ex in examples:
            for side in ("chosen", "rejected"):
                ids = torch.tensor([ex[f"{side}_ids"]])
                target = torch.tensor(ex[f"{side}_labels"][1:])
                logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
                keep = target != IGNORE_INDEX
                alone.append(logp[keep].gather(1, target[keep][:, None]).sum().item())
    assert sums.shape == (2 * len(examples),)
    assert torch.allclose(sums, torch.tensor(alone), atol=2e-3), (sums.tolist(), alone)
    assert counts.tolist() == [sum(1 for x in ex[f"{s}_labels"][1:] if x != IGNORE_INDEX)
                               for ex in examples for s in ("chosen", "rejected")]


def test_the_losses_at_the_reference_and_when_the_policy_prefers_the_chosen_answer():
    logps = torch.tensor([-10.0, -12.0, -20.0, -19.0])  # [c0, r0, c1, r1]
    counts = torch.tensor([5.0, 6.0, 10.0, 9.0])
    loss, stats = preference_loss("dpo", "sigmoid", 0.1, logps, counts, logps.reshape(2, 2))
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6) and stats["rewards/margins"] == 0
    ref = torch.tensor([[-11.0, -11.0], [-20.0, -20.0]])  # the policy moved towards chosen on pair 0 only
    loss, stats = preference_loss("dpo", "sigmoid", 0.1, logps, counts, ref)
    assert loss.item() < math.log(2) + 0.06 and stats["rewards/accuracies"] == 0.5
    assert math.isclose(stats["rewards/chosen"], 0.1 * (1 + 0) / 2, rel_tol=1e-6)
    for kind in ("ipo", "hinge"):
        loss, _ = preference_loss("dpo", kind, 0.1, logps, counts, ref)
        assert torch.isfinite(loss)
    loss, stats = preference_loss("orpo", "sigmoid", 0.1, logps, counts, None)
    nll = 30.0 / 15.0  # the chosen answers' mean token negative log-likelihood
    assert math.isclose(stats["nll_loss"], nll, rel_tol=1e-6) and loss.item() > nll
    with pytest.raises(RuntimeError, match="reference"):
        preference_loss("dpo", "sigmoid", 0.1, logps, counts, None)


def test_the_wrong_data_for_an_objective_is_refused_at_submit(workspace, fixtures_dir, default_model_dir):
    pref = import_dataset(str(fixtures_dir / "dpo_en_demo.json"), model=None)
    sft = import_dataset(str(fixtures_dir / "alpaca_en_demo.json"), model=None)
    with pytest.raises(JobError, match="train it with objective dpo or orpo"):
        submit_training(TrainConfig(dataset=str(pref.dataset_id)))
    with pytest.raises(JobError, match="DPO needs rows with a chosen and a rejected answer"):
        submit_training(TrainConfig(dataset=str(sft.dataset_id), objective="dpo"))
    with pytest.raises(JobError, match="ORPO needs rows"):
        submit_training(TrainConfig(dataset=str(fixtures_dir / "alpaca_en_demo.json"), objective="orpo"))
    with pytest.raises(ConfigError, match="beta must be in"):
        TrainConfig.from_dict({"dataset": "1", "objective": "dpo", "beta": 0})
    with db_session() as s:
        assert s.exec(select(Run)).all() == []  # nothing was queued
    run = submit_training(TrainConfig(dataset=str(pref.dataset_id), objective="dpo"), start=False)
    assert run.status == "queued"


def _pref_curve(run_id: int, key: str) -> list[float]:
    return [m.extra[key] for m in runs.run_metrics(run_id) if m.extra and key in m.extra]


@pytest.mark.slow
def test_a_dpo_run_raises_the_margin_stops_with_a_checkpoint_and_resumes_with_the_same_reference(
        workspace, fixtures_dir, default_model_dir):
    config = TrainConfig(dataset=str(fixtures_dir / "dpo_en_demo.json"), objective="dpo", method="lora",
                         max_steps=10, batch_size=2, max_length=128, learning_rate=5e-4, lora_r=8, lora_alpha=16,
                         save_steps=2, seed=7)
    run = submit_training(config)
    wait_until(lambda: runs.get_run(run.id).step >= 3, 300, poll_s=0.2)
    stopped = runs.stop(run.id, timeout_s=120)
    assert stopped.status == "stopped" and stopped.resume_from_checkpoint, runs.log_tail(run.id)
    reference = workspace / "runs" / str(run.id) / REFERENCE_FILE
    assert reference.is_file()
    written = reference.stat().st_mtime_ns

    runs.resume(run.id)
    final = runs.wait_for(run.id, timeout_s=600, poll_s=0.5)
    assert final.status == "succeeded", runs.log_tail(run.id)
    log = (workspace / "runs" / str(run.id) / "worker.log").read_text()
    assert "objective dpo (beta 0.1, sigmoid loss, reference = the model at step 0)" in log
    assert "reference log-probabilities: read" in log  # the resume scored nothing again …
    assert reference.stat().st_mtime_ns == written  # … and kept the step-0 reference
    margins = _pref_curve(run.id, "rewards/margins")
    assert len(margins) == 10 and abs(margins[0]) < 1e-4  # step 1: the policy is the reference
    assert sum(margins[-3:]) / 3 > 0.5, margins  # it learned to prefer the chosen answers
    assert sum(_pref_curve(run.id, "rewards/accuracies")[-3:]) / 3 >= 0.5
    assert (workspace / "runs" / str(run.id) / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_an_orpo_run_trains_without_a_reference(workspace, fixtures_dir, default_model_dir):
    config = TrainConfig(dataset=str(fixtures_dir / "dpo_en_demo.json"), objective="orpo", max_steps=3,
                         batch_size=2, max_length=96, save_steps=0)
    final = runs.wait_for(submit_training(config).id, timeout_s=300, poll_s=0.5)
    assert final.status == "succeeded", runs.log_tail(final.id)
    assert not (workspace / "runs" / str(final.id) / REFERENCE_FILE).exists()
    nll = _pref_curve(final.id, "nll_loss")
    assert len(nll) == 3 and all(x > 0 for x in nll) and _pref_curve(final.id, "log_odds_ratio")


def test_the_data_preview_shows_prompt_chosen_and_rejected_with_what_counts(workspace, fixtures_dir,
                                                                           default_model_dir):
    from core.data import preview_row
    from ui.data import show_row

    r = import_dataset(str(fixtures_dir / "dpo_en_demo.json"), model=None)
    pv = preview_row(str(r.dataset_id), 0, "train", "default", 4096)
    labels = [lab for _, lab in pv["segments"]]
    assert labels.count("chosen") == 1 and labels.count("rejected") == 1 and "trained" not in labels
    text = {lab: t for t, lab in pv["segments"] if lab in ("chosen", "rejected")}
    row = pv["row"]
    assert text["chosen"].strip().startswith(row["chosen"][0]["content"].strip()[:30])
    assert text["rejected"].strip().startswith(row["rejected"][0]["content"].strip()[:30])
    prompt = row["prompt"][-1]["content"].strip()[:30]
    assert sum(prompt in t for t, lab in pv["segments"] if lab == "masked") == 2  # the prompt, once per side, grey
    segments, info = show_row(str(r.dataset_id), "train", 0, "default", 4096)
    assert "a preference pair" in info and "Only the answers count" in info


def test_a_preference_run_is_evaluated_against_its_chosen_answers(workspace, fixtures_dir):
    from core.evaluate.config import EvalConfig
    from core.evaluate.job import load_rows, split_conversation
    from core.evaluate.submit import validate
    from core.runs import store

    pref = import_dataset(str(fixtures_dir / "dpo_en_demo.json"), model=None, split={"validation": 0, "test": 0.25})
    run = store.submit("train", TrainConfig(dataset=str(pref.dataset_id), objective="dpo").model_dump(mode="json"),
                       dataset_ref=str(pref.dataset_id))
    rows, ref, split, kind = load_rows(EvalConfig(run_id=run.id))
    assert ref == f"run:{run.id}" and split == "test" and kind == "sft" and len(rows) == 2
    originals = list(prepare_dataset(str(fixtures_dir / "dpo_en_demo.json")).rows)
    for _, row in rows:
        prompt, reference = split_conversation(row)
        match = next(o.row for o in originals if o.row["prompt"] == prompt)
        assert reference == match["chosen"][-1]["content"]  # the chosen answer is the reference
    # a preference dataset of the Data tab: generation mode takes it, multiple choice says why not
    validate(EvalConfig(tuned="default", dataset=str(pref.dataset_id), split="test"))  # accepted
    with pytest.raises(JobError, match="not multiple-choice questions"):
        validate(EvalConfig(run_id=None, tuned="default", dataset=str(pref.dataset_id), mode="multiple_choice"))


def test_the_memory_pre_flight_counts_both_sequences_of_a_pair():
    from core.estimate.report import plan_for_config

    sft = plan_for_config(TrainConfig(dataset="1", batch_size=4), device="cpu", bf16_supported=False)
    dpo = plan_for_config(TrainConfig(dataset="1", batch_size=4, objective="dpo"), device="cpu", bf16_supported=False)
    assert (sft.batch_size, dpo.batch_size) == (4, 8)
