"""Sweeps (issue 29): the sweep file's checks (pure), and real sweeps on the runs core — the driver and its trials are
real supervisor + worker subprocesses training the tiny random model on real SQLite, the study in Optuna's RDB
storage in the same database."""
from __future__ import annotations

import json
import os
import signal

import pytest

from core import runs
from core.sweep import jobs as sweeps
from core.sweep.spec import SweepError, parse_sweep, parse_sweep_yaml
from tests.conftest import wait_until

ALPACA = os.path.join(os.path.dirname(__file__), "fixtures", "alpaca_en_demo.json")


def _spec(**kw) -> dict:
    data = {"name": "lr-search", "base": {"dataset": ALPACA, "max_steps": 6, "eval_split": 0.1, "eval_steps": 3},
            "search": {"learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 1e-3},
                       "lora_r": {"type": "choice", "values": [8, 16, 32]}},
            "objective": "eval_loss", "trials": 6, "parallel": 1}
    data.update(kw)
    return data


# ---- the sweep file (pure) -----------------------------------------------------------------------------------------
def test_the_issue_example_parses_and_normalises():
    spec = parse_sweep_yaml("""
name: lr-search
base: {base_model: default, dataset: "3", method: lora, max_steps: 60, eval_split: 0.1}
search:
  learning_rate: {type: log_uniform, low: 1.0e-5, high: 1.0e-3}
  lora_r: {type: choice, values: [8, 16, 32]}
  warmup_ratio: {type: uniform, low: 0.0, high: 0.2}
  batch_size: {type: int, low: 2, high: 8, step: 2}
  beta: {type: uniform, low: 0.05, high: 0.5}
objective: eval_loss
trials: 6
parallel: 1
""")
    assert spec["direction"] == "minimize" and spec["trials"] == 6 and spec["parallel"] == 1
    assert spec["base"] == {"base_model": "default", "dataset": "3", "method": "lora", "max_steps": 60,
                            "eval_split": 0.1}
    assert spec["search"]["batch_size"] == {"type": "int", "low": 2, "high": 8, "step": 2}
    assert spec["pruner"] == {"type": "median", "startup_trials": 2, "warmup_steps": 0}
    assert parse_sweep(_spec(objective="field_accuracy"))["direction"] == "maximize"


@pytest.mark.parametrize("change,needle", [
    ({"search": {"learnin_rate": {"type": "uniform", "low": 0.1, "high": 0.2}}},
     "search.learnin_rate: unknown parameter — not a training config field (did you mean learning_rate"),
    ({"search": {"learning_rate": {"type": "log_uniform", "low": 1e-3, "high": 1e-5}}},
     "search.learning_rate: low (0.001) must be below high (1e-05)"),
    ({"search": {"learning_rate": {"type": "log_uniform", "low": 0, "high": 1e-3}}}, "log_uniform needs low > 0"),
    ({"search": {"learning_rate": {"type": "uniform", "low": 1e-4, "high": 2.0}}},
     "search.learning_rate: the value 2.0 makes a run config that is refused — learning_rate: learning rate 2.0 is "
     "far too large"),
    ({"search": {"lora_r": {"type": "uniform", "low": 4, "high": 8}}}, "lora_r is a whole-number field: use type int"),
    ({"search": {"lora_r": {"type": "choice", "values": [0, 8]}}}, "LoRA rank r must be at least 1"),
    ({"search": {"method": {"type": "choice", "values": ["lora", "dora"]}}}, "the value 'dora'"),
    ({"search": {"lora_r": {"type": "gaussian", "low": 1, "high": 2}}}, "search.lora_r.type must be one of"),
    ({"search": {"dataset": {"type": "choice", "values": ["1", "2"]}}}, "search.dataset: cannot be searched"),
    ({"objective": "accuracy_of_vibes"}, "unknown objective 'accuracy_of_vibes'"),
    ({"base": {"dataset": ALPACA, "max_steps": 6}}, "objective eval_loss needs held-out rows: set base.eval_split"),
    ({"base": {"dataset": ALPACA, "lr": 1}}, "base: invalid training config: lr: unknown field"),
    ({"trials": 0}, "trials must be between 1 and 1000"),
    ({"parallel": 2.5}, "parallel must be a whole number"),
    ({"budget": {"total_steps": -1}}, "budget.total_steps must be at least 1"),
    ({"enqueue": [{"learning_rate": 0.5}]}, "enqueue[0].learning_rate: 0.5 is outside search.learning_rate"),
    ({"searchh": {}}, "unknown key(s) in the sweep file: searchh"),
    ({"objective": "field_accuracy", "eval": {"split": "heldout"}}, "eval.split must be test, validation, train"),
    ({"eval": {"limit": 5}}, "eval: applies to an Evaluate metric objective"),
])
def test_a_bad_sweep_file_is_refused_naming_what_to_fix(change, needle):
    with pytest.raises(SweepError) as exc:
        parse_sweep(_spec(**change))
    assert needle in str(exc.value)


def test_cli_bad_sweep_file_is_one_line_exit_2(workspace, tmp_path, capsys):
    from core.__main__ import main

    bad = tmp_path / "sweep.yaml"
    bad.write_text("name: x\nbase: {dataset: '3', eval_split: 0.1}\nsearch: {lora_rank: {type: choice, values: [4]}}\n")
    assert main(["sweep", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: search.lora_rank: unknown parameter")
    assert main(["sweep", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "sweep file not found" in capsys.readouterr().err
    assert runs.list_runs(kind="sweep") == []  # nothing queued


# ---- real sweeps ----------------------------------------------------------------------------------------------------
def _trials_spec(tiny: str, **kw) -> dict:
    # two good trials first (the pruner's baseline), then one that cannot learn (learning rate 1e-7) and would run
    # long: at its first eval it is worse than the median of the completed trials at that step, and is pruned
    base = {"base_model": tiny, "dataset": ALPACA, "max_steps": 6, "batch_size": 2, "max_length": 96, "lora_r": 4,
            "lora_alpha": 8, "eval_split": 0.1, "eval_steps": 3, "save_steps": 3}
    data = {"name": "prune-me", "base": base,
            "search": {"learning_rate": {"type": "choice", "values": [5e-2, 1e-7]},
                       "max_steps": {"type": "choice", "values": [6, 300]}},
            "enqueue": [{"learning_rate": 5e-2, "max_steps": 6}, {"learning_rate": 5e-2, "max_steps": 6},
                        {"learning_rate": 1e-7, "max_steps": 300}, {"learning_rate": 5e-2, "max_steps": 6}],
            "trials": 4, "parallel": 1, "pruner": {"type": "median", "startup_trials": 2}}
    data.update(kw)
    return data


def test_sweep_prunes_the_weak_trial_survives_a_driver_crash_and_continues_the_best(
        workspace, tiny_model_dir, tmp_path, capsys):
    import yaml

    from core.__main__ import main

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(_trials_spec(tiny_model_dir)))
    assert main(["sweep", "--config", str(path), "--json"]) == 0
    queued = json.loads(capsys.readouterr().out)
    # just queued: no trial has a value yet (a driver forked warm may already have enqueued its trials: listed, waiting)
    assert queued["kind"] == "sweep" and queued["best_run"] is None
    assert all(t["value"] is None for t in queued["trials"]), queued["trials"]
    sweep_id = queued["id"]
    # the driver holds no training slot: it runs while trial 0 trains (FTS_MAX_CONCURRENT_RUNS is 1)
    first = wait_until(lambda: [r for r in runs.list_runs(kind="train") if r.step >= 1], 180)[0]
    driver = runs.get_run(sweep_id)
    assert driver.status == "running" and first.status == "running"
    # the driver dies mid-sweep (kill -9 of its process group); its trial runs on as a job of its own
    os.killpg(os.getpgid(driver.pid), signal.SIGKILL)
    wait_until(lambda: runs.reconcile(on_start=True, ids=[sweep_id]), 30)  # the studio starting again
    runs.dispatch()
    assert runs.get_run(sweep_id).status in ("queued", "starting", "running")
    final = runs.wait_for(sweep_id, timeout_s=600)
    assert final.status == "succeeded", runs.log_tail(sweep_id, 60)
    assert "reattaching to trial 0 (run" in runs.log_tail(sweep_id, 200)

    assert main(["sweeps", "show", str(sweep_id), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    trials = d["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned", "complete"], trials
    assert all(set(t) >= {"run_id", "params", "value", "state"} for t in trials)
    # no trial was started twice: one training run per trial, all tagged with the sweep
    train_runs = runs.list_runs(kind="train")
    assert sorted(r.id for r in train_runs) == sorted(t["run_id"] for t in trials)
    assert all(f"sweep-{sweep_id}" in r.tags for r in train_runs)
    pruned = runs.get_run(trials[2]["run_id"])
    assert pruned.status == "stopped" and pruned.resume_from_checkpoint and pruned.step < 300
    assert pruned.error.startswith(f"pruned by sweep {sweep_id} at step 3: eval_loss ") and "worse than median" \
        in pruned.error
    # a pruned trial's value is its last reported eval loss (Optuna's), the one it was judged on
    assert trials[2]["pruned_at_step"] == 3 and trials[2]["value"] == trials[2]["intermediate"]["3"]
    best = min((t for t in trials if t["state"] == "complete"), key=lambda t: t["value"])
    assert d["best_run"] == best["run_id"] and d["best_value"] == best["value"]
    assert d["status"] == "succeeded" and final.final_metrics["pruned"] == 1

    # the best trial, continued (the usual continue-as path: a new run from its adapter)
    assert main(["sweeps", "continue", str(sweep_id), "--steps", "1", "--json"]) == 0
    cont = json.loads(capsys.readouterr().out)
    assert cont["parent_run_id"] == d["best_run"] and f"sweep-{sweep_id}" in cont["tags"]
    done = runs.wait_for(cont["id"], timeout_s=300)
    assert done.status == "succeeded", runs.log_tail(done.id)
    assert done.config["init_adapter"] == runs.get_run(d["best_run"]).adapter_path


def test_stopping_a_sweep_stops_its_running_trial_and_resuming_resumes_it(workspace, tiny_model_dir):
    spec = _trials_spec(tiny_model_dir, enqueue=[{"learning_rate": 1e-7, "max_steps": 300}], trials=1)
    sweep = sweeps.submit_sweep(spec)
    trial = wait_until(lambda: [r for r in runs.list_runs(kind="train") if r.step >= 1], 180)[0]
    stopped = sweeps.stop_sweep(sweep.id, timeout_s=60)
    assert stopped.status == "stopped"
    trial = wait_until(lambda: (r := runs.get_run(trial.id)).status.is_finished and r, 120)
    assert trial.status == "stopped" and trial.resume_from_checkpoint
    assert trial.error == f"stopped with sweep {sweep.id}; resuming the sweep resumes it"
    d = sweeps.sweep_to_dict(sweep.id)
    assert [t["state"] for t in d["trials"]] == ["running"]
    # resuming the sweep resumes the trial from its checkpoint (no second run for it)
    runs.resume(sweep.id)
    wait_until(lambda: runs.get_run(trial.id).status == "running" and runs.get_run(trial.id).attempt == 2, 120)
    assert len(runs.list_runs(kind="train")) == 1
    sweeps.stop_sweep(sweep.id, timeout_s=60)
    wait_until(lambda: runs.get_run(trial.id).status.is_finished, 120)


def test_an_evaluate_metric_objective_scores_each_trial_with_an_evaluation(workspace, tiny_model_dir):
    """field_accuracy (maximised): each finished trial is evaluated on the demo task's held-out rows (an evaluate job
    on the queue) and told the tuned side's score. The tiny random model writes no JSON: its score is 0, a real one."""
    from core import quickstart
    from core.evaluate import results

    ds = quickstart.load_demo()
    spec = {"name": "by-fields", "base": {"base_model": tiny_model_dir, "dataset": str(ds.id), "max_steps": 1,
                                          "batch_size": 2, "max_length": 512, "lora_r": 4, "lora_alpha": 8},
            "search": {"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}},
            "objective": "field_accuracy", "eval": {"split": "validation", "limit": 2, "max_new_tokens": 8},
            "trials": 1}
    sweep = sweeps.submit_sweep(spec)
    final = runs.wait_for(sweep.id, timeout_s=600)
    assert final.status == "succeeded", runs.log_tail(sweep.id, 60)
    d = sweeps.sweep_to_dict(sweep.id)
    assert d["direction"] == "maximize" and [t["state"] for t in d["trials"]] == ["complete"], d["trials"][0]["note"]
    ev = results.list_evaluations(run_id=d["trials"][0]["run_id"])[0]
    assert d["trials"][0]["value"] == ev.metrics["tuned"]["field_accuracy"] == d["best_value"]
    assert d["best_run"] == d["trials"][0]["run_id"]


def test_the_study_shares_the_studio_database_without_sharing_a_table_name(db_workspace):
    """Optuna's RDB storage on the studio's own database (SQLite, PostgreSQL): its tables beside the studio's, no name
    in common, and the studio reads and writes its runs as before."""
    import optuna
    from optuna.storages._rdb import models
    from sqlalchemy import inspect
    from sqlmodel import SQLModel

    from core.config import get_settings
    from core.sweep import study
    from storage import get_engine

    ours, theirs = set(SQLModel.metadata.tables), set(models.BaseModel.metadata.tables)
    assert not ours & theirs
    optuna.create_study(study_name=study.study_name(1), storage=study.storage())
    tables = set(inspect(get_engine(get_settings().database_url)).get_table_names())
    assert ours | theirs <= tables
    assert runs.get_run(runs.submit("train", {}, start=False).id).status == "queued"
    study.forget_sweeps([1])
    assert study.load(1) is None
    study.reset_storages()


def test_parallel_coordinates_rank_the_trials_and_put_each_on_its_axes():
    from ui.sweeps import parallel_frame

    d = {"search": {"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2},
                    "lora_r": {"type": "choice", "values": [2, 4]}},
         "objective": "eval_loss", "direction": "minimize", "trials": [
             {"number": 0, "state": "complete", "value": 2.0, "params": {"learning_rate": 1e-3, "lora_r": 2}},
             {"number": 1, "state": "pruned", "value": 1.0, "params": {"learning_rate": 1e-2, "lora_r": 4}},
             {"number": 2, "state": "complete", "value": 1.5, "params": {"learning_rate": 1e-4, "lora_r": 4}},
             {"number": 3, "state": "running", "value": None, "params": {"learning_rate": 1e-4, "lora_r": 2}}]}
    frame, axes, who = parallel_frame(d)
    assert axes == ["learning_rate", "lora_r", "eval_loss"]
    assert who == "best = trial 2, 2nd = trial 0, 3rd = trial 1 (pruned)"
    lines = {(r.trial, r.axis): round(r.position, 6) for r in frame.itertuples()}
    assert lines == {("best", "learning_rate"): 0.0, ("best", "lora_r"): 1.0, ("best", "eval_loss"): 0.0,
                     ("2nd", "learning_rate"): 0.5, ("2nd", "lora_r"): 0.0, ("2nd", "eval_loss"): 1.0,
                     ("3rd", "learning_rate"): 1.0, ("3rd", "lora_r"): 1.0}  # log scale; pruned: no value point
