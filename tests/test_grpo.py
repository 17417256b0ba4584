"""Reward-based tuning (issue 13): GRPO on the studio's spine with the embedded model on CPU.

The rewards score what they say, a reward that fails on an answer gives it 0 and is counted (the run goes on), a
config or dataset GRPO cannot use is refused before anything is queued, and a real run on the demo task's prompts
raises its mean reward, shows sampled answers and the generation / training time split, and saves an adapter that
Evaluate and the Playground load like any other."""
from __future__ import annotations

import json
import re

import pytest

from core import runs
from core.data import import_dataset
from core.data.demo import write_demo_dataset
from core.runs import JobError
from core.train.config import ConfigError, TrainConfig
from core.train.jobs import continue_training, submit_training
from core.train.rewards import RewardSet, check_references, prompt_rows, score

REF = json.dumps({"intent": "refund", "order_id": "A1234", "product": None, "urgency": "high",
                  "sentiment": "negative"})


def test_each_reward_scores_what_it_says():
    good = '{"intent": "refund", "order_id": "a1234", "product": null, "urgency": "high", "sentiment": "neutral"}'
    assert score("field_accuracy", good, REF) == pytest.approx(0.8)  # 4 of 5 fields, ids case-insensitive
    assert score("field_accuracy", "Sure! Here is your refund.", REF) == 0.0
    assert (score("valid_json", "prose then " + good, None), score("valid_json", "no object", None)) == (1.0, 0.0)
    pattern = re.compile(r'^\{"intent"')
    assert (score("regex", good, None, regex=pattern), score("regex", " " + good, None, regex=pattern)) == (1.0, 0.0)
    assert score("length", "x" * 50, None, length_min=10, length_max=100) == 1.0
    assert score("length", "x" * 150, None, length_max=100) == pytest.approx(0.5)
    assert score("length", "x" * 4, None, length_min=10) == 0.0
    assert score("rouge_l", "the parcel never arrived", "the parcel never arrived") == pytest.approx(1.0)
    assert score("rouge_l", "completely different words", "the parcel never arrived") == 0.0


def test_a_reward_that_fails_on_an_answer_scores_it_zero_counts_it_and_logs_it_once():
    said: list[str] = []
    rs = RewardSet(["field_accuracy", "regex"], regex=r"(a|aa)+$", log=said.append)
    fa, rx = rs.functions()
    assert (fa.__name__, rx.__name__) == ("field_accuracy", "regex")  # TRL logs rewards/<name>/mean
    # a reference that is not JSON makes field_accuracy raise: those answers score 0, the others are scored
    assert fa([None] * 3, [[{"role": "assistant", "content": REF}]] * 3, reference=[REF, "plain text", "also"]) \
        == [1.0, 0.0, 0.0]
    # a pattern that backtracks for ever on one answer is cut off after REGEX_TIMEOUT_S and scores 0
    assert rx([None] * 2, ["a" * 60 + "b", "aaa"]) == [0.0, 1.0]
    assert rs.take_errors() == 3 and rs.take_errors() == 0 and rs.total_errors == 3
    assert len(said) == 2 and "not a JSON object" in said[0] and "RewardTimeout" in said[1]  # once per kind
    assert all("the run goes on" in s for s in said)


def test_conversations_become_prompts_with_their_last_answer_as_reference():
    rows = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                          {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
                          {"role": "assistant", "content": "A2"}]},
            {"messages": [{"role": "user", "content": "only a question"}]},
            {"messages": [{"role": "assistant", "content": "no prompt"}]}]
    out = prompt_rows(rows)
    assert [len(p["prompt"]) for p in out] == [4, 1] and [p["reference"] for p in out] == ["A2", None]
    with pytest.raises(ValueError, match="no answer in the data is a JSON object"):
        check_references(["field_accuracy"], ["A2"], "the data")
    with pytest.raises(ValueError, match="has none"):
        check_references(["rouge_l"], [None], "the data")
    check_references(["valid_json", "length"], [None], "the data")


def test_grpo_settings_are_checked_when_the_config_is_read():
    assert TrainConfig(dataset="1", objective="grpo").beta == 0.0  # no KL term unless asked: no reference pass
    assert TrainConfig(dataset="1", objective="dpo").beta == 0.1
    bad = {
        "unknown reward(s) accuracy": {"rewards": ["accuracy"]},
        "reward 'regex' needs reward_regex": {"rewards": ["regex"]},
        "not a valid regular expression": {"rewards": ["regex"], "reward_regex": "(unclosed"},
        "needs length_min and/or length_max": {"rewards": ["length"]},
        "num_generations must be between 2 and 64": {"num_generations": 1},
        "GRPO runs have no eval loss": {"eval_split": 0.1},
        "temperature must be in": {"temperature": 0},
    }
    for message, fields in bad.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            TrainConfig.from_dict({"dataset": "1", "objective": "grpo", **fields})


def test_data_grpo_cannot_use_is_refused_at_submit_naming_what_fits(workspace, fixtures_dir, default_model_dir):
    pref = import_dataset(str(fixtures_dir / "dpo_en_demo.json"), model=None)
    with pytest.raises(JobError, match="SFT and GRPO need conversations"):
        submit_training(TrainConfig(dataset=str(pref.dataset_id), objective="grpo"))
    alpaca = str(fixtures_dir / "alpaca_en_demo.json")
    with pytest.raises(JobError, match="field_accuracy' scores JSON fields, and no answer in .* is a JSON object: "
                                       "use rouge_l, regex or length"):
        submit_training(TrainConfig(dataset=alpaca, objective="grpo"))  # alpaca answers are prose
    assert runs.list_runs(kind="train") == []  # nothing was queued
    run = submit_training(TrainConfig(dataset=alpaca, objective="grpo", rewards=["rouge_l"]), start=False)
    assert run.status == "queued"


def test_the_memory_pre_flight_counts_every_sampled_answer():
    from core.estimate.report import plan_for_config

    plan = plan_for_config(TrainConfig(dataset="1", objective="grpo", batch_size=2, num_generations=4,
                                       max_length=256, max_completion_length=64), device="cpu", bf16_supported=False)
    assert (plan.batch_size, plan.seq_len) == (8, 320)


@pytest.mark.slow
def test_a_grpo_run_raises_its_mean_reward_and_shows_its_samples_then_continues_another_run(
        workspace, default_model_dir):
    """The base model rambles (answers cap at 16 new tokens here); the length reward wants at most 30 characters:
    within a few seeded steps the model learns to stop sooner and the mean reward rises (seen: 0.11 -> 0.81, 0.51,
    1.0). beta > 0: the KL to the starting adapter is logged, and that frozen copy is not saved."""
    from ui.train_runs import run_details

    data = write_demo_dataset(workspace / "demo.jsonl", n=48, seed=3)
    config = TrainConfig(dataset=str(data), objective="grpo", rewards=["length", "valid_json"], length_max=30,
                         num_generations=4, max_completion_length=16, batch_size=2, max_steps=4,
                         learning_rate=3e-3, temperature=1.0, save_steps=2, seed=11, beta=0.02)
    final = runs.wait_for(submit_training(config).id, timeout_s=600, poll_s=0.5)
    assert final.status == "succeeded", runs.log_tail(final.id)
    extras = [m.extra for m in runs.run_metrics(final.id) if m.extra]
    rewards = [e["reward"] for e in extras]
    assert len(rewards) == 4
    assert sum(rewards[-2:]) / 2 > rewards[0] + 0.2, rewards  # it learned what the reward asks
    last = extras[-1]
    assert last["rewards/length/mean"] >= 0 and "rewards/valid_json/mean" in last and last["reward_errors"] == 0
    assert last["kl"] >= 0  # beta > 0: the KL to TRL's frozen copy of the starting adapter
    assert 0 < last["time/generate_s"] < last["time/step_s"]  # the split a person sees
    assert len(last["samples"]) == 2 and all(isinstance(s["answer"], str) for s in last["samples"])
    log = runs.log_tail(final.id, max_lines=200)
    assert "rewards length, valid_json; 4 answers per prompt" in log and "attention sdpa" in log
    assert "KL beta 0.02" in log
    adapter = workspace / "runs" / str(final.id) / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()  # no KL copy saved

    # the Train tab: the reward curves and the latest sampled answers, shown as text
    _head, _loss, second, *_rest, outcome, _lineage, _cache = run_details(str(final.id), None)
    assert {"mean reward", "reward spread", "length", "valid_json"} <= set(second["series"])
    assert "Sampled answers" in outcome and "of which sampling + scoring" in outcome and "<pre" in outcome

    # SFT on, or GRPO again: continue makes a new run from this adapter, with the objective asked for
    nxt = continue_training(final.id, 2, objective="sft")
    assert nxt.parent_run_id == final.id and nxt.config["objective"] == "sft"
    assert nxt.config["init_adapter"] == str(adapter) and nxt.config["beta"] == 0.1
    runs.stop(nxt.id, timeout_s=60)


def test_the_train_form_sends_the_grpo_box_only_for_grpo():
    from ui.train_form import config_from_inputs

    form = {"dataset": "1", "objective": "sft", "rewards": ["regex"], "reward_regex": "", "num_generations": 4.0,
            "max_completion_length": 64.0, "temperature": 1.0, "length_min": 0, "length_max": 0}
    assert config_from_inputs(form).objective == "sft"  # a half-filled hidden GRPO box does not block an SFT run
    cfg = config_from_inputs({**form, "objective": "grpo", "rewards": ["field_accuracy", "length"],
                              "length_max": 120.0, "beta": 0})
    assert (cfg.rewards, cfg.length_max, cfg.num_generations, cfg.beta) == (["field_accuracy", "length"], 120, 4, 0)
    with pytest.raises(ConfigError, match="reward 'regex' needs reward_regex"):
        config_from_inputs({**form, "objective": "grpo"})
