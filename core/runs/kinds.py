"""Kinds of job: a kind is a worker entry point plus how to launch it. Queue, limit, stop, logs and reconcile are
shared by all of them (core.runs.scheduler).

The entry point is named as ``"module:function"`` and imported only inside the worker process, so the runs core
never imports what it runs. The function receives a :class:`core.runs.worker.JobContext` and returns a
:class:`core.runs.worker.JobResult` (or raises; the runs core turns the exception into the job's error).

Built-in kinds are listed here. ``FTS_JOB_KINDS`` names extra modules (comma-separated) that call :func:`register`
when imported — in every process, workers included, since they inherit the environment (the tests use it for a
trivial kind).
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage import Run


def default_command(job: Run) -> list[str]:
    return [sys.executable, "-m", "core.runs.worker", "--job-id", str(job.id)]


@dataclass(frozen=True)
class JobKind:
    name: str
    entry: str  # "package.module:function", called in the worker process with a JobContext
    resumable: bool = False  # a failed/stopped/interrupted job can be queued again (continues from a checkpoint)
    command: Callable[[Run], list[str]] = default_command  # the worker process's argv (the supervisor starts it)
    description: str = ""
    # what to change when a job of this kind runs out of memory: "package.module:function", f(config, memory limit in
    # bytes or None) -> str, imported only where a job ended (the worker, the supervisor), as ``entry`` is
    oom_advice: str = ""
    # the queue's lane: "device" jobs share FTS_MAX_CONCURRENT_RUNS (the accelerator); "io" jobs (imports) have
    # their own small limit, so reading a file never waits behind a training run; "serve" jobs (local servers, which
    # run until stopped) have theirs (FTS_MAX_SERVERS), so a server never holds a training run's slot; "control" jobs (a
    # sweep's driver, which only submits and watches other jobs) have theirs (FTS_MAX_SWEEPS)
    lane: str = "device"
    # what else goes when jobs of this kind are deleted: "package.module:function", f(job ids), called after their
    # rows and folders are gone (a serve job's deployment row); imported only then, as ``entry``
    on_delete: str = ""
    # a job of this kind found dead when the studio starts is queued again at once (a sweep's driver: it reattaches
    # to its trials, which run on as jobs of their own), instead of waiting for a person to resume it
    resume_on_start: bool = False


def _train_command(job: Run) -> list[str]:
    config = job.config or {}
    n = int(config.get("num_processes") or config.get("num_gpus") or 1)  # num_gpus: configs before issue 27
    if n > 1:
        # DDP / FSDP: n ranks of the same worker, started and watched as one job by core.runs.ranks; rank 0 writes
        return [sys.executable, "-m", "core.runs.ranks", "--processes", str(n), "--", *default_command(job)]
    return default_command(job)


_KINDS: dict[str, JobKind] = {}
_loaded_extra: set[str] = set()


def register(kind: JobKind) -> JobKind:
    _KINDS[kind.name] = kind
    return kind


register(JobKind("train", "core.train.worker:run_job", resumable=True, command=_train_command,
                 description="supervised fine-tuning (LoRA / QLoRA / full)",
                 oom_advice="core.train.advice:out_of_memory_advice"))
register(JobKind("evaluate", "core.evaluate.job:run_job",
                 description="base vs fine-tuned on held-out data (generation metrics, multiple choice, lm-eval)"))
register(JobKind("judge", "core.evaluate.judge:run_job",
                 description="an LLM judge (pairwise or rubric) over votes or an evaluation, measured on the votes"))
register(JobKind("import", "core.data.jobs:run_job", lane="io",
                 description="a dataset too big to read in the page: read, checked and stored by a worker"))
register(JobKind("export", "core.deploy.export:run_job",
                 description="merge a LoRA run into its base; safetensors, GGUF (+ Ollama Modelfile) or the adapter"))
register(JobKind("serve", "core.deploy.serve_job:run_job", lane="serve",
                 on_delete="core.deploy.deployment_rows:forget_jobs",
                 description="a local deployment's OpenAI-compatible server (transformers serve); runs until stopped"))
register(JobKind("tensorboard", "core.train.viewer:run_job", lane="serve",
                 description="the workspace's TensorBoard (every run's event files) on a loopback port; runs until "
                             "stopped"))


register(JobKind("sweep", "core.sweep.driver:run_job", lane="control", resumable=True, resume_on_start=True,
                 on_delete="core.sweep.study:forget_sweeps",
                 description="a hyperparameter sweep's driver (Optuna): submits its trials as training runs, prunes "
                             "weak ones, holds no training slot"))


def kinds_in_lane(lane: str) -> list[str]:
    _load_extra()
    return sorted(k.name for k in _KINDS.values() if k.lane == lane)


def _load_extra() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get("FTS_JOB_KINDS", "").split(","))):
        if module not in _loaded_extra:
            importlib.import_module(module)
            _loaded_extra.add(module)


def get_kind(name: str) -> JobKind:
    _load_extra()
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"unknown job kind '{name}' (known: {', '.join(sorted(_KINDS))})") from None


def all_kinds() -> list[str]:
    _load_extra()
    return sorted(_KINDS)


def load_entry(kind: JobKind) -> Callable[[Any], Any]:
    module, _, func = kind.entry.partition(":")
    return getattr(importlib.import_module(module), func)


def run_on_delete(kind: JobKind, job_ids: list[int]) -> None:
    """The kind's delete hook (``on_delete``) for jobs of it that were deleted; nothing when it names none."""
    if kind.on_delete and job_ids:
        module, _, func = kind.on_delete.partition(":")
        getattr(importlib.import_module(module), func)(list(job_ids))


def oom_advice(kind: JobKind, config: dict, limit_bytes: int | None) -> str:
    """What to change when a job of ``kind`` ran out of memory (its ``oom_advice`` function; '' when it names none)."""
    if not kind.oom_advice:
        return ""
    module, _, func = kind.oom_advice.partition(":")
    return getattr(importlib.import_module(module), func)(config, limit_bytes)
