"""Multi-process training (issue 27): DDP and FSDP2 over 2 CPU processes (gloo) on a tiny random Llama, against one
process — the same loss curve for the same seed, data and global batch; a stop then resume under FSDP (sharded
checkpoints, sharded optimizer state); a killed rank ends the run failed with its log tail, and it resumes. Plus
the pure parts: the config's checks, the host's limit at submit, the per-device estimate."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from core import runs as jobs
from core.config import REPO_ROOT
from core.runs import JobError
from core.train.config import ConfigError, TrainConfig
from tests.conftest import FIXTURES, stop_with_checkpoint, wait_until

LOSS_TOLERANCE = 2e-3  # |loss(1 process) - loss(2 processes)| at every step, same seed, data and global batch


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tests.base_models import make_base_model

    return str(make_base_model(tmp_path_factory.mktemp("tiny") / "llama", "llama", hidden=64, layers=2))


def config(model: str, **kw) -> TrainConfig:
    base = dict(base_model=model, chat_template="alpaca", dataset=str(FIXTURES / "alpaca_en_demo.json"), max_steps=6,
                batch_size=2, max_length=64, lora_r=4, lora_alpha=8, learning_rate=5e-3, save_steps=3,
                logging_steps=1)
    base.update(kw)
    return TrainConfig(**base)


def losses(run_id: int) -> dict[int, float]:
    rows = [m for m in jobs.run_metrics(run_id) if m.loss is not None]
    assert len(rows) == len({m.step for m in rows}), "one metrics row per step: only rank 0 writes"
    return {m.step: m.loss for m in rows}


# ---- the config, the host, the estimate (no training) ---------------------------------------------------------
def test_num_gpus_is_read_as_num_processes_and_the_strategy_is_checked():
    assert config("m", num_gpus=2).model_dump()["num_processes"] == 2  # configs written before issue 27
    assert config("m", num_gpus=2).distributed == "ddp"
    assert config("m", num_processes=2).distributed == "ddp"  # more than one process: ddp unless fsdp
    assert config("m", num_processes=2, distributed="fsdp").distributed == "fsdp"
    assert "num_gpus" not in config("m").to_yaml()
    # a YAML's strategy and a flag's count: several processes share the work (ddp unless fsdp), one has none
    assert TrainConfig.from_dict(config("m").model_dump() | {"num_processes": 2}).distributed == "ddp"
    assert TrainConfig.from_dict(config("m", num_processes=2, distributed="fsdp").model_dump()
                                 | {"num_processes": 1}).distributed == "none"
    for kw, needle in [({"num_processes": 2, "method": "qlora", "distributed": "fsdp"}, "FSDP with QLoRA needs CUDA"),
                       ({"num_processes": 2, "distributed": "ddp", "objective": "dpo"}, "objective 'sft' only"),
                       ({"num_processes": 0}, "at least 1")]:
        with pytest.raises(ConfigError, match=needle):
            TrainConfig.from_dict(config("m").model_dump() | kw)


def test_a_host_refuses_more_processes_than_its_cores_in_one_line(workspace, tiny_llama):
    import torch

    from core.train.device import cpu_only_build, process_capacity, torch_version_file
    from core.train.jobs import check_processes

    # what the dashboard reads from torch's version file, without importing torch, agrees with torch itself
    text = torch_version_file().read_text()
    assert cpu_only_build(text) == (torch.version.cuda is None and torch.version.hip is None)
    assert cpu_only_build(text.replace("cuda: Optional[str] = None", "cuda: Optional[str] = '12.8'")) is False
    cores, what = process_capacity()
    check_processes(config(tiny_llama, num_processes=cores, distributed="ddp" if cores > 1 else "none"))
    with pytest.raises(JobError) as exc:
        check_processes(config(tiny_llama, num_processes=cores + 1))
    assert str(exc.value) == (f"num_processes {cores + 1} is more than this host's {cores} {what}: use at most "
                              f"{cores}")


def test_per_device_estimate_and_the_estimate_cli(tiny_llama):
    from core.estimate import load_model_spec
    from core.estimate.memory import TrainingPlan, estimate_training_memory, per_device_peak_bytes

    spec = load_model_spec(tiny_llama)
    est = estimate_training_memory(spec, TrainingPlan(method="full", precision="fp32", device="cpu", seq_len=64))
    one = per_device_peak_bytes(est, "none", 1, spec.num_layers)
    ddp = per_device_peak_bytes(est, "ddp", 2, spec.num_layers)
    fsdp = per_device_peak_bytes(est, "fsdp", 2, spec.num_layers)
    comp = est.component_bytes()
    assert one == est.peak_bytes and ddp == one + comp["gradients"]  # a whole copy each + the gradient buckets
    assert fsdp < one  # weights, gradients and optimizer states split in two
    assert fsdp > one - (comp["weights"] + comp["optimizer_states"] + comp["gradients"])
    out = subprocess.run([sys.executable, "-m", "core", "estimate", "--model", tiny_llama, "--method", "full",
                          "--dtype", "fp32", "--seq-len", "64", "--num-processes", "2", "--distributed", "fsdp",
                          "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    report = json.loads(out.stdout)
    assert (report["num_processes"], report["distributed"]) == (2, "fsdp")
    assert report["per_device_peak_bytes"] < report["peak_bytes"]
    bad = subprocess.run([sys.executable, "-m", "core", "estimate", "--num-processes", "2"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--distributed" in bad.stderr


# ---- real runs: 2 CPU processes ------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_and_fsdp_match_one_process_and_save_the_usual_adapter(workspace, tiny_llama, tmp_path):
    """The same seed and data, the same global batch (2 = 2 x 1 per process): the loss at every step within
    LOSS_TOLERANCE. DDP is started from the CLI (`python -m core train --num-processes 2`)."""
    from safetensors.torch import load_file

    from core.train.jobs import submit_training

    one = jobs.wait_for(submit_training(config(tiny_llama, name="one")).id, timeout_s=300)
    assert one.status == "succeeded", jobs.log_tail(one.id)
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(config(tiny_llama, batch_size=1, name="ddp").to_yaml())
    out = subprocess.run([sys.executable, "-m", "core", "train", "--config", str(cfg), "--num-processes", "2",
                          "--wait", "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ddp = jobs.get_run(json.loads(out.stdout)["id"])
    fsdp = jobs.wait_for(submit_training(config(tiny_llama, batch_size=1, num_processes=2, distributed="fsdp",
                                                name="fsdp")).id, timeout_s=300)
    assert (ddp.status, fsdp.status) == ("succeeded", "succeeded"), jobs.log_tail(fsdp.id)
    base = losses(one.id)
    assert sorted(base) == list(range(1, 7)) and base[6] < base[1]  # it learns: the match is not of flat lines
    worst = 0.0
    for run in (ddp, fsdp):
        other = losses(run.id)
        assert sorted(other) == sorted(base)
        worst = max(worst, *(abs(other[s] - base[s]) for s in base))
    print(f"\nloss |1 process - 2 processes| at most {worst:.2e} over 6 steps (DDP and FSDP)")
    assert worst <= LOSS_TOLERANCE
    log_file = workspace / "runs" / str(fsdp.id) / "worker.log"
    wait_until(lambda: "ranks: peak RSS rank 0" in log_file.read_text(), 30)  # the launcher, as the ranks end
    fsdp_log = log_file.read_text()
    per_rank = wait_until(lambda: jobs.get_run(fsdp.id).final_metrics.get("peak_rss_bytes_per_rank"), 10)
    assert len(per_rank) == 2 and jobs.get_run(fsdp.id).final_metrics.get("global_step") == 6  # merged in
    assert "FSDP2 over 2 processes: full shard, wrapped by LlamaDecoderLayer" in fsdp_log
    assert "2 CPU processes: 1 thread(s) each" in fsdp_log
    ckpt = workspace / "runs" / str(fsdp.id) / "checkpoints" / "checkpoint-6"
    assert (ckpt / "pytorch_model_fsdp_0").is_dir() and (ckpt / "optimizer_0").is_dir()  # sharded (DCP)
    # the adapter every other tab loads: the same tensors as one process's, the same values within float noise
    a = load_file(f"{one.adapter_path}/adapter_model.safetensors")
    for run in (ddp, fsdp):
        b = load_file(f"{run.adapter_path}/adapter_model.safetensors")
        assert sorted(a) == sorted(b)
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3


FSDP_STEPS = 200  # tiny-model steps are fast: 60 in test_ray's two-node run were over before a stop landed


@pytest.mark.slow
def test_fsdp_stop_then_resume_continues_from_the_sharded_checkpoint(workspace, tiny_llama):
    from core.train.jobs import submit_training

    run = submit_training(config(tiny_llama, batch_size=1, num_processes=2, distributed="fsdp", max_steps=FSDP_STEPS,
                                 save_steps=1000, learning_rate=1e-3, name="fsdp-stop"))
    wait_until(lambda: jobs.get_run(run.id).step >= 2, 300)
    stopped, ckpt_step = stop_with_checkpoint(run.id)
    assert 2 <= ckpt_step < FSDP_STEPS
    shards = os.listdir(stopped.resume_from_checkpoint)
    assert {"pytorch_model_fsdp_0", "optimizer_0", "rng_state_0.pth", "rng_state_1.pth"} <= set(shards)
    jobs.resume(run.id)
    final = jobs.wait_for(run.id, timeout_s=300)
    assert final.status == "succeeded", jobs.log_tail(run.id)
    log = (workspace / "runs" / str(run.id) / "worker.log").read_text()
    assert f"training: {FSDP_STEPS} steps (starting at {ckpt_step})" in log  # weights and optimizer shards restored
    assert sorted(losses(run.id)) == list(range(1, FSDP_STEPS + 1))


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_with_its_log_tail_and_it_resumes(workspace, tiny_llama):
    from core.train.jobs import submit_training

    run = submit_training(config(tiny_llama, batch_size=1, num_processes=2, max_steps=80, save_steps=2,
                                 learning_rate=1e-3, name="rank-killed"))
    wait_until(lambda: jobs.get_run(run.id).step >= 3, 300)
    launcher = psutil.Process(jobs.get_run(run.id).worker_pid)
    # the launcher's log names each rank's pid in rank order (they fork from the warm worker: not its children)
    started = re.search(r"ranks: 2 processes started \(pids (\d+), (\d+) forked from the warm worker;",
                        jobs.log_tail(run.id, max_lines=400))
    assert started, jobs.log_tail(run.id, max_lines=400)
    ranks = {"0": psutil.Process(int(started[1])), "1": psutil.Process(int(started[2]))}
    rank1 = ranks["1"]
    os.kill(rank1.pid, signal.SIGKILL)
    killed_at = time.time()
    failed = wait_until(lambda: (r := jobs.get_run(run.id)).status == "failed" and r, 30, poll_s=0.1)
    print(f"\nrank 1 killed -> run failed after {time.time() - killed_at:.1f}s")
    first, second, *rest = failed.error.splitlines()
    assert first.startswith("rank 1 of 2 was killed by signal 9 (SIGKILL) from outside the studio"), first
    assert re.fullmatch(r"peak RSS per rank: rank 0 \S+ [KMG]B, rank 1 \S+ [KMG]B", second), second
    assert rest[0] == "--- rank 1 log tail ---" and "--- log tail ---" in rest  # that rank's lines, then the job's
    assert any("'rank-killed' starting" in line for line in rest[1:rest.index("--- log tail ---")])  # its own output
    assert f"rank 1 (pid {rank1.pid}) was killed by signal 9 (SIGKILL)" in failed.error  # the launcher's log line
    figures = wait_until(lambda: jobs.get_run(run.id).final_metrics.get("peak_rss_bytes_per_rank"), 10)
    assert len(figures) == 2 and all(b > 10_000_000 for b in figures)  # each rank's own peak, beside the run's
    gone = lambda p: not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    wait_until(lambda: gone(ranks["0"]) and gone(launcher), 10)  # the other rank did not outlive it
    assert failed.resume_from_checkpoint
    jobs.resume(run.id)
    final = jobs.wait_for(run.id, timeout_s=300)
    assert final.status == "succeeded", jobs.log_tail(run.id)
    assert sorted(losses(run.id)) == list(range(1, 81))
