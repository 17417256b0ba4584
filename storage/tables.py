"""The tables. The DB holds paths and JSON, never blobs: a run's files live under ``workspace/runs/<id>/``."""
from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Optional

from sqlalchemy import JSON, Column, String, Text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(dt: datetime | None) -> datetime | None:
    """Datetimes read back from SQLite may come without tzinfo; they are UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


class RunStatus(StrEnum):
    """Where a job is in its life. Only ``core.runs.store`` changes it, along ``core.runs.store.TRANSITIONS``.

    A ``StrEnum``: members compare equal to their values and print as them, so rows read back from the database
    (always members, see :class:`StatusType`) and plain strings from JSON mix safely.
    """

    queued = "queued"
    starting = "starting"  # claimed by a dispatcher, process being spawned
    running = "running"
    stopping = "stopping"  # stop requested, worker is saving a checkpoint
    succeeded = "succeeded"
    failed = "failed"
    stopped = "stopped"
    interrupted = "interrupted"  # ended by a host shutdown, or found gone when the studio started

    @classmethod
    def active(cls) -> tuple[RunStatus, ...]:
        return (cls.starting, cls.running, cls.stopping)

    @classmethod
    def finished(cls) -> tuple[RunStatus, ...]:
        return (cls.succeeded, cls.failed, cls.stopped, cls.interrupted)

    @classmethod
    def resumable(cls) -> tuple[RunStatus, ...]:
        return (cls.failed, cls.stopped, cls.interrupted)

    @property
    def is_active(self) -> bool:
        return self in RunStatus.active()

    @property
    def is_finished(self) -> bool:
        return self in RunStatus.finished()


class StatusType(TypeDecorator):
    """A run status stored as its plain string value (portable, additive upgrades), read back as :class:`RunStatus`."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else RunStatus(value).value

    def process_result_value(self, value, dialect):
        return None if value is None else RunStatus(value)


class Run(SQLModel, table=True):
    __tablename__ = "runs"

    id: Optional[int] = Field(default=None, primary_key=True)
    kind: str = Field(default="train", index=True)  # train | evaluate | export | ... (core.runs.kinds)
    name: str = ""
    tags: Optional[list[str]] = Field(default=None, sa_column=Column(JSON, nullable=True))  # a person's labels
    status: RunStatus = Field(default=RunStatus.queued, sa_column=Column(StatusType(), nullable=False, index=True))
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    base_model: str = ""
    dataset_ref: str = ""
    # the content hash of the data a training run was queued with (a dataset version's, or "sha256:…" of a file):
    # its lineage survives the dataset's deletion (core.lineage)
    dataset_hash: str = ""
    method: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    heartbeat_at: Optional[datetime] = None
    pid: Optional[int] = None  # the job's supervisor process (core.runs.supervise), leader of its process group
    worker_pid: Optional[int] = None  # the worker process the supervisor started
    worker_host: Optional[str] = None
    owner: str = Field(default="", index=True)  # who submitted it: an anonymous visitor id on a Space ('' locally)
    backend: str = "local"  # core.runs.backends: where the job's processes run
    external_id: Optional[str] = None  # the backend's own id for the job (e.g. a Ray submission id)
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    output_dir: Optional[str] = None
    adapter_path: Optional[str] = None
    log_path: Optional[str] = None
    # progress, denormalised from the metrics so the runs table is one query
    step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    last_loss: Optional[float] = None
    tokens_per_s: Optional[float] = None
    eta_s: Optional[float] = None
    final_metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # lifecycle helpers
    resume_from_checkpoint: Optional[str] = None  # set by "resume"; the worker continues from it
    parent_run_id: Optional[int] = Field(default=None, index=True)  # "continue training" of a finished run
    stop_requested: bool = False
    attempt: int = 0
    # memory of the worker as sampled by its supervisor (explains an out-of-memory kill)
    peak_memory_bytes: Optional[int] = None
    memory_limit_bytes: Optional[int] = None


class RunMetric(SQLModel, table=True):
    __tablename__ = "run_metrics"

    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(index=True, foreign_key="runs.id")
    step: int = 0
    epoch: Optional[float] = None
    loss: Optional[float] = None
    eval_loss: Optional[float] = None
    lr: Optional[float] = None
    grad_norm: Optional[float] = None
    tokens_per_s: Optional[float] = None
    memory_bytes: Optional[int] = None
    wall_time_s: Optional[float] = None
    # what a kind of training adds to its curves (preference tuning: rewards, margins, accuracy), by name
    extra: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)


class Dataset(SQLModel, table=True):
    __tablename__ = "datasets"

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = ""
    format: str = ""  # detected / chosen source format (alpaca, sharegpt, openai, ...)
    kind: str = "sft"  # sft | text | preference
    rows: int = 0
    content_hash: str = Field(default="", index=True, unique=True)
    path: str = ""  # directory of the stored version (train/validation/test JSONL of chat messages)
    source: str = ""  # original file name, path or hub id
    owner: str = ""  # who imported it (a named user, a Space visitor's id; '' in a single-user studio)
    created_at: datetime = Field(default_factory=utcnow)
    splits: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Evaluation(SQLModel, table=True):
    """Base vs tuned on one set of examples: the numbers, the settings, and where the per-example outputs are."""

    __tablename__ = "evaluations"

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: Optional[int] = Field(default=None, index=True)  # the evaluate job (a row in runs) that produced it
    run_id: Optional[int] = Field(default=None, index=True)  # the training run evaluated, when it is one
    kind: str = "generation"  # generation | multiple_choice | lm_eval
    name: str = ""
    base_label: str = ""
    tuned_label: str = ""
    dataset_ref: str = ""  # a dataset id, "run:<id>" (the run's own held-out rows) or an lm-eval task name
    split: str = ""
    n: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    settings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # base/tuned/delta
    headline: str = ""  # the metric the runs list shows
    headline_base: Optional[float] = None
    headline_tuned: Optional[float] = None
    examples_path: str = ""  # JSONL of per-example prompts, references, outputs and scores


class Vote(SQLModel, table=True):
    """One blind A/B judgement in the Playground."""

    __tablename__ = "votes"

    id: Optional[int] = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)
    prompt: str = Field(default="", sa_column=Column(Text))
    system_prompt: str = Field(default="", sa_column=Column(Text))
    output_a: str = Field(default="", sa_column=Column(Text))
    output_b: str = Field(default="", sa_column=Column(Text))
    model_a: str = ""  # the model shown as A (a stable key: "default", "run:7", a path)
    model_b: str = ""
    label_a: str = ""
    label_b: str = ""
    winner: str = ""  # a | b | tie | both_bad
    voter: str = "anonymous"
    settings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # chat mode: each side's earlier turns before ``prompt`` ({"a": [messages], "b": [messages]}); None: a first turn
    history: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON, nullable=True))


class Deployment(SQLModel, table=True):
    """A serving endpoint the studio started or described: a local server process or a TGI / vLLM container.

    Status: ``starting`` (process up: merging, loading) → ``running`` (health OK) → ``stopping`` → ``stopped``;
    ``failed`` (it never became healthy, or could not start: ``error`` says why); ``dead`` (it was running and its
    process is gone); ``planned`` (no engine here: the command to run on a GPU host is in ``args``). Status changes
    are compare-and-set on the status they were decided from (core.deploy.deployments). A local deployment's life
    is its ``serve`` job's (``job_id``, on the runs core); the row follows the job."""

    __tablename__ = "deployments"

    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: Optional[int] = Field(default=None, index=True)  # the training run served, when it is one
    target: str = "local"  # local | tgi | vllm
    model_ref: str = ""  # what was asked for: "run:7", "default", a folder
    model_dir: str = ""  # the folder the server loads (a merged model)
    served_name: str = ""  # the model name clients send and /v1/models lists
    url: str = ""  # base URL of the OpenAI-compatible API (…/v1)
    host: str = ""
    port: Optional[int] = None
    status: str = Field(default="starting", index=True)
    pid: Optional[int] = None  # local: its serve job's supervisor (leader of the job's process group)
    job_id: Optional[int] = None  # local: the ``serve`` job (core.runs) that runs the server; the row follows it
    container_id: Optional[str] = None
    log_path: str = ""
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    # containers: the exact argv; local: the same server's command by hand (the studio runs it as a serve job)
    args: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    health_timeout_s: Optional[float] = None  # from the start of loading the model (after any merge) to /health OK
    created_by: str = "anonymous"
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    stopped_at: Optional[datetime] = None
