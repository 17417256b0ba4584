"""Training runs on the runs core: real supervisor + worker subprocesses, real SQLite, the real embedded SmolLM2
(CPU)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from sqlmodel import select

from core import runs as jobs
from core.config import REPO_ROOT, db_session, get_settings
from core.train.config import TrainConfig
from core.train.jobs import continue_training, submit_training
from storage import Run
from tests.conftest import stop_with_checkpoint, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def alpaca(fixtures_dir):
    return str(fixtures_dir / "alpaca_en_demo.json")


def small_config(dataset: str, **kw) -> TrainConfig:
    base = dict(dataset=dataset, method="lora", max_steps=3, batch_size=2, max_length=96, lora_r=4, lora_alpha=8,
                save_steps=1, logging_steps=1)
    base.update(kw)
    return TrainConfig(**base)



def test_lora_run_records_loss_and_saves_adapter(workspace, alpaca, default_model_dir):
    run = submit_training(small_config(alpaca, name="few-steps"))
    assert run.status == "running" and run.pid
    run = jobs.wait_for(run.id, timeout_s=300)
    assert run.status == "succeeded", jobs.log_tail(run.id)
    metrics = jobs.run_metrics(run.id)
    assert [m.step for m in metrics if m.loss is not None] == [1, 2, 3]
    assert all(0 < m.loss < 20 for m in metrics if m.loss is not None)
    assert all(m.lr is not None and m.grad_norm is not None for m in metrics)
    assert run.step == 3 and run.max_steps == 3 and run.tokens_per_s and run.tokens_per_s > 0
    adapter = workspace / "runs" / str(run.id) / "adapter"
    assert run.adapter_path == str(adapter)
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert (workspace / "runs" / str(run.id) / "config.yaml").is_file()
    ckpt = workspace / "runs" / str(run.id) / "checkpoints" / "checkpoint-3"
    assert (ckpt / "optimizer.pt").is_file() and (ckpt / "scheduler.pt").is_file()
    assert run.final_metrics["global_step"] == 3 and run.final_metrics["dataset_loss_tokens"] > 0
    # a CPU run's threads follow the host's free cores (core.train.cpu_share)
    log = (workspace / "runs" / str(run.id) / "worker.log").read_text()
    settings = get_settings()
    if settings.cpu_share and len(os.sched_getaffinity(0)) > 1 and not settings.worker_threads:
        assert "cpu threads: " in log and "fewer while other processes keep the cores busy" in log
    else:  # turned off, or a thread count fixed by the host: the count stays as it is
        assert "cpu threads" not in log


def test_qlora_run_trains_a_4bit_base_with_gradient_checkpointing(workspace, alpaca, default_model_dir):
    cfg = small_config(alpaca, method="qlora", max_steps=2, gradient_checkpointing=True)
    run = jobs.wait_for(submit_training(cfg).id, timeout_s=300)
    assert run.status == "succeeded", jobs.log_tail(run.id)
    log = (workspace / "runs" / str(run.id) / "worker.log").read_text()
    assert "QLoRA: 210 linear layers in 4-bit NF4" in log  # 30 layers x 7 projections
    # what ran is visible: QLoRA honours gradient checkpointing (it used to be silently dropped)
    assert "effective setup: objective sft, method qlora" in log and "gradient checkpointing on" in log
    assert [m.step for m in jobs.run_metrics(run.id) if m.loss is not None] == [1, 2]
    assert (workspace / "runs" / str(run.id) / "adapter" / "adapter_model.safetensors").is_file()


def test_stop_then_resume_continues_from_the_checkpoint(workspace, alpaca, tiny_model_dir):
    """(The job machinery: the tiny model, 60 steps of ~0.1 s — a stop lands within a second or two.)"""
    steps_in_all = 60
    run = submit_training(small_config(alpaca, max_steps=steps_in_all, name="stop-resume", base_model=tiny_model_dir))
    wait_until(lambda: jobs.get_run(run.id).step >= 2, 300, poll_s=0.05)
    stopped, ckpt_step = stop_with_checkpoint(run.id)
    assert 2 <= ckpt_step < steps_in_all
    resumed = jobs.resume(run.id)
    assert resumed.status in ("running", "queued")
    final = jobs.wait_for(run.id, timeout_s=300)
    assert final.status == "succeeded", jobs.log_tail(run.id)
    assert final.step == steps_in_all
    log = (workspace / "runs" / str(run.id) / "worker.log").read_text()
    assert f"resuming from {stopped.resume_from_checkpoint}" in log
    assert f"training: {steps_in_all} steps (starting at {ckpt_step})" in log  # optimizer/scheduler state restored
    steps = [m.step for m in jobs.run_metrics(run.id) if m.loss is not None]
    assert steps == list(range(1, steps_in_all + 1))  # one row per step: the curve continues, no duplicates


def test_kill_9_is_noticed_within_5s_with_the_log_tail(workspace, alpaca, tiny_model_dir):
    monitor = jobs.Monitor(interval_s=1.0)  # what the dashboard runs
    monitor.start()
    try:
        run = submit_training(small_config(alpaca, max_steps=100_000, name="doomed", base_model=tiny_model_dir))
        wait_until(lambda: jobs.get_run(run.id).step >= 1, 300)
        ckpt = wait_until(lambda: jobs.latest_checkpoint(workspace / "runs" / str(run.id)), 60)  # a complete one
        os.kill(run.pid, signal.SIGKILL)
        killed_at = time.time()
        failed = wait_until(lambda: (r := jobs.get_run(run.id)).status == "failed" and r, 10, poll_s=0.05)
        noticed_s = time.time() - killed_at
    finally:
        monitor.stop()
    print(f"\nkill -9 noticed after {noticed_s:.2f}s")
    assert noticed_s < 5.0
    assert f"worker process {run.pid} died" in failed.error
    assert "log tail" in failed.error and "/100000  loss " in failed.error
    assert failed.resume_from_checkpoint >= str(ckpt)  # it can be resumed from its last complete checkpoint
    # the worker the supervisor started died with it (it is killed when its parent dies)
    assert failed.worker_pid
    wait_until(lambda: not psutil.pid_exists(failed.worker_pid) or
               psutil.Process(failed.worker_pid).status() == psutil.STATUS_ZOMBIE, 10)


def test_kill_9_with_no_dashboard_is_seen_by_the_next_read_and_resume_continues(workspace, alpaca, tiny_model_dir,
                                                                                  tmp_path):
    """The issue's case: a run started from the CLI, no dashboard anywhere, its training process killed with -9
    at step 5 or so: the next `runs show` says failed (with why), and `runs resume` continues from its checkpoint.
    (The job machinery is what is tried: the tiny model, its 40 steps a few seconds.)"""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(small_config(alpaca, max_steps=40, save_steps=2, name="no-dashboard",
                                base_model=tiny_model_dir).to_yaml())
    queued = json.loads(_cli("train", "--config", str(cfg), "--json").stdout)
    run_id = queued["id"]
    wait_until(lambda: jobs.run_metrics(run_id) and max(m.step for m in jobs.run_metrics(run_id)) >= 5, 300,
               poll_s=0.05)
    os.kill(jobs.get_run(run_id).worker_pid, signal.SIGKILL)
    killed_at = time.time()
    shown = json.loads(_cli("runs", "show", str(run_id), "--json").stdout)
    while shown["status"] == "running" and time.time() - killed_at < 10:
        shown = json.loads(_cli("runs", "show", str(run_id), "--json").stdout)
    seen_s = time.time() - killed_at
    print(f"\nkill -9 (no dashboard) -> `runs show` says {shown['status']} after {seen_s:.2f}s: "
          f"{shown['error'].splitlines()[0]}")
    assert shown["status"] == "failed", shown
    assert "killed by signal 9" in shown["error"] and "peak RSS" in shown["error"]
    ckpt = shown["resume_from_checkpoint"]
    assert ckpt and 4 <= int(ckpt.rsplit("-", 1)[1]) < 40, ckpt
    resumed = _cli("runs", "resume", str(run_id), "--json")
    assert json.loads(resumed.stdout)["status"] in ("running", "queued")
    final = jobs.wait_for(run_id, timeout_s=300)
    assert final.status == "succeeded", jobs.log_tail(run_id)
    log = (workspace / "runs" / str(run_id) / "worker.log").read_text()
    assert f"resuming from {ckpt}" in log
    assert [m.step for m in jobs.run_metrics(run_id) if m.loss is not None] == list(range(1, 41))


def test_app_start_reconcile_marks_vanished_runs_interrupted(workspace):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with db_session() as s:
        run = Run(name="orphan", status="running", config=small_config("x").model_dump(), pid=dead.pid,
                  worker_host=socket.gethostname())
        s.add(run)
        other = Run(name="elsewhere", status="running", config={}, pid=1, worker_host="another-host")
        s.add(other)
    log = workspace / "runs" / str(run.id) / "worker.log"
    log.parent.mkdir(parents=True)
    log.write_text("step 41/100 loss 1.23\nlast words of the worker\n")
    changed = jobs.reconcile(on_start=True)
    assert changed == [run.id]  # the other host's run has a fresh enough heartbeat to be left alone... or none
    r = jobs.get_run(run.id)
    assert r.status == "interrupted" and "last words of the worker" in r.error and r.finished_at
    assert jobs.get_run(other.id).status == "running"


def test_queued_runs_start_in_order_with_limit_1(workspace, alpaca, tiny_model_dir):
    first = submit_training(small_config(alpaca, max_steps=2, name="first", base_model=tiny_model_dir))
    second = submit_training(small_config(alpaca, max_steps=2, name="second", base_model=tiny_model_dir))
    third = submit_training(small_config(alpaca, max_steps=1, name="third", base_model=tiny_model_dir))
    assert first.status == "running" and second.status == "queued" and third.status == "queued"
    # nobody waits on the queue here: each finishing supervisor starts the next run itself
    third = wait_until(lambda: (r := jobs.get_run(third.id)).status.is_finished and r, 300, poll_s=0.5)
    first, second = jobs.get_run(first.id), jobs.get_run(second.id)
    assert first.status == second.status == third.status == "succeeded"
    assert first.finished_at <= second.started_at and second.finished_at <= third.started_at  # one at a time, in order
    # the runs a finishing supervisor started fork from the same warm worker as the first (the same environment)
    for r in (second, third):
        assert "started from the warm worker" in (workspace / "runs" / str(r.id) / "worker.log").read_text()


def test_continue_training_starts_from_the_finished_adapter(workspace, alpaca, tiny_model_dir):
    parent = jobs.wait_for(submit_training(small_config(alpaca, max_steps=1, base_model=tiny_model_dir)).id,
                           timeout_s=300)
    child = continue_training(parent.id, 2)
    assert child.parent_run_id == parent.id
    child = jobs.wait_for(child.id, timeout_s=300)
    assert child.status == "succeeded", jobs.log_tail(child.id)
    assert child.config["init_adapter"] == parent.adapter_path and child.step == 2
    log = (workspace / "runs" / str(child.id) / "worker.log").read_text()
    assert f"continuing from adapter {parent.adapter_path}" in log


def test_worker_out_of_memory_is_a_clear_failure(workspace, alpaca, default_model_dir, monkeypatch):
    monkeypatch.setenv("FTS_WORKER_MAX_MEMORY_GB", "0.05")  # 50 MB above the loaded libraries: a real OOM
    run = jobs.wait_for(submit_training(small_config(alpaca, batch_size=8, max_length=512)).id, timeout_s=300)
    assert run.status == "failed"
    assert run.error.startswith("out of memory:") and "batch_size" in run.error


def _cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ))
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_json_round_trip(workspace, alpaca, tiny_model_dir, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(small_config(alpaca, max_steps=2, name="cli-run", base_model=tiny_model_dir).to_yaml())
    done = json.loads(_cli("train", "--config", str(cfg), "--wait", "--json").stdout)
    assert done["status"] == "succeeded" and done["name"] == "cli-run" and done["step"] == 2
    listed = json.loads(_cli("runs", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [done["id"]]
    shown = json.loads(_cli("runs", "show", str(done["id"]), "--json").stdout)
    for key in ("id", "name", "status", "method", "base_model", "dataset", "step", "max_steps", "loss",
                "tokens_per_s", "adapter_path", "error", "final_metrics", "created_at", "finished_at"):
        assert key in shown
    assert shown["config"]["max_steps"] == 2 and TrainConfig.model_validate(shown["config"]).name == "cli-run"
    assert [m["step"] for m in shown["metrics"] if m["loss"] is not None] == [1, 2]
    assert shown["loss"] == shown["metrics"][-1]["loss"]
    # resuming a finished run is refused with a reason and exit code 2
    bad = _cli("runs", "resume", str(done["id"]), check=False)
    assert bad.returncode == 2 and "only stopped, failed or interrupted" in bad.stderr


@pytest.mark.parametrize(
    "yaml_text,needle",
    [
        ("dataset: /no/such/file.json\n", "dataset file not found: /no/such/file.json"),
        ("dataset: '{alpaca}'\nbase_model: /no/model/here\n", "model '/no/model/here' not found"),
        ("dataset: '{alpaca}'\nlearning_rate: 0\n", "learning rate must be > 0"),
        ("dataset: '{alpaca}'\nlora_r: 0\n", "LoRA rank r must be at least 1"),
        ("dataset: '{alpaca}'\nmax_length: 4\n", "max length must be at least 8"),
        ("dataset: '99'\n", "dataset 99 not found"),
        # no network here: a Hub id is refused at once (one HEAD, no retries), no run row for it
        ("dataset: '{alpaca}'\nbase_model: nobody-here/not-a-model\n", "'nobody-here/not-a-model' cannot be loaded"),
    ],
)
def test_cli_bad_input_is_one_line_and_nothing_is_queued(workspace, alpaca, tmp_path, yaml_text, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text.replace("{alpaca}", alpaca))
    proc = _cli("train", "--config", str(cfg), check=False)
    assert proc.returncode == 2
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with db_session() as s:
        assert s.exec(select(Run)).all() == []
