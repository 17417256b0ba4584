"""A run's experiment trackers (TrainConfig ``report_to``): TensorBoard, MLflow, trackio, Weights & Biases.

The studio's own curves stay the record; each tracker gets a copy written from the same place with the same names
and values: every metric row the worker stores (core.train.callbacks) goes to every tracker at its step — ``loss``,
``eval_loss``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``memory_bytes``, ``wall_time_s``, ``epoch`` and the row's
extra numbers (``tokens_seen``, preference rewards, GRPO rewards …). With them: the run's whole config as params,
tags (run id, name, objective, base model, method), and the adapter as an artifact where a tracker keeps files
(MLflow, W&B). Only rank 0 reports (the caller opens trackers there only).

Local first: TensorBoard event files in the run folder (``runs/<id>/tensorboard``); MLflow into the workspace's
``mlflow.db`` (artifacts under ``mlartifacts/``) unless ``MLFLOW_TRACKING_URI`` names another store; trackio under
the workspace's ``trackio/`` (unless ``TRACKIO_DIR``, or trackio's own Space / server variables, say otherwise);
W&B offline in the run folder unless ``WANDB_API_KEY`` is in the environment (only its presence is read: it is never
stored, shown or logged).

A tracker that is missing (its import fails) or unreachable never fails a run: one warning line in the run's log,
and the run goes on without it. Where each tracker's data is goes to ``runs/<id>/trackers.json`` for the run page
and the CLI; a resumed run reopens the same MLflow / W&B / trackio run.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.train.config import TrainConfig

PROJECT = "finetune-studio"  # the MLflow experiment, W&B project and trackio project (each tool's own variable wins)
WHERE_FILE = "trackers.json"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
TRACKIO_DIRNAME = "trackio"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param's value
# a tracker server that does not answer costs one short wait, not MLflow's default of minutes of retries; no usage
# data leaves the studio unless the admin says so
MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                   "MLFLOW_DISABLE_TELEMETRY": "true"}
WANDB_INIT_TIMEOUT_S = 30.0
_USERINFO = re.compile(r"(//)[^/@\s]+@")


def hide_credentials(text: str) -> str:
    """A URI or message without the ``user:password@`` part a tracking URI may carry."""
    return _USERINFO.sub(r"\1***@", str(text))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return hide_credentials(text)[:300]


def metric_values(fields: dict[str, Any]) -> dict[str, float]:
    """The numbers of one metric row as a tracker gets them: every finite number by its stored name (booleans, text,
    lists and missing values left out)."""
    out = {}
    for k, v in fields.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = v
    return out


def config_params(config: TrainConfig) -> dict[str, str]:
    """The whole config as flat text params (lists and nulls as JSON), each at most MAX_PARAM_CHARS."""
    out = {}
    for k, v in config.model_dump(mode="json").items():
        text = v if isinstance(v, str) else json.dumps(v)
        out[k] = text[:MAX_PARAM_CHARS]
    return out


@dataclass
class RunInfo:
    """What every tracker is told about the run."""

    run_id: int
    name: str
    attempt: int
    run_dir: Path
    workspace: Path
    config: TrainConfig
    previous: dict = field(default_factory=dict)  # trackers.json of an earlier attempt (ids to reopen)

    @property
    def display_name(self) -> str:
        return f"{self.run_id}-{self.name}" if self.name else f"run-{self.run_id}"

    @property
    def tags(self) -> dict[str, str]:
        c = self.config
        return {"fts.run_id": str(self.run_id), "fts.run_name": self.name, "fts.objective": c.objective,
                "fts.base_model": c.base_model, "fts.method": c.method, "fts.dataset": c.dataset}


class Tracker(ABC):
    """One tracker (an abstract base: TensorBoard, MLflow, trackio and W&B implement it): ``open`` says where its data
    is (a dict for trackers.json); ``log`` one metric row at a step; ``finish`` how the run ended and its adapter
    folder (None: no adapter)."""

    name = ""

    @abstractmethod
    def open(self, info: RunInfo) -> dict: ...

    @abstractmethod
    def log(self, step: int, values: dict[str, float]) -> None: ...

    @abstractmethod
    def finish(self, status: str, adapter_dir: Path | None) -> None: ...


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def open(self, info: RunInfo) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        logdir = info.run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(logdir), flush_secs=5)  # a viewer sees a live run within seconds
        yaml_text = info.config.to_yaml()
        self.writer.add_text("config", "    " + yaml_text.replace("\n", "\n    "), 0)  # markdown: a code block
        self.writer.add_text("tags", "  \n".join(f"{k}: {v}" for k, v in info.tags.items()), 0)
        return {"logdir": str(logdir)}

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.last_step = max(step, getattr(self, "last_step", 0))

    def finish(self, status: str, adapter_dir: Path | None) -> None:
        # at the last step: an event at an earlier step reads, to TensorBoard, as a restart that orphans the later ones
        self.writer.add_text("status", status, getattr(self, "last_step", 0))
        self.writer.close()


def _quiet_loggers(*names: str) -> None:
    import logging

    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)


class MlflowTracker(Tracker):
    name = "mlflow"
    STATUS = {"succeeded": "FINISHED", "failed": "FAILED"}  # stopped / interrupted: KILLED

    def open(self, info: RunInfo) -> dict:
        for k, v in MLFLOW_DEFAULTS.items():
            os.environ.setdefault(k, v)
        from mlflow import MlflowClient
        from mlflow.entities import Param

        _quiet_loggers("mlflow", "alembic")  # the store's "Creating initial MLflow database tables" lines
        with contextlib.suppress(Exception):  # MLflow was imported before (TRL imports it): decide again, now
            from mlflow.telemetry import set_telemetry_client

            set_telemetry_client()

        given = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        uri = given or f"sqlite:///{info.workspace / MLFLOW_DB}"
        self.client = client = MlflowClient(tracking_uri=uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or PROJECT
        exp_id = self._experiment(experiment, None if given else (info.workspace / MLFLOW_ARTIFACTS).as_uri())
        prev = info.previous.get("mlflow") or {}
        run_id = None
        if prev.get("run_id") and prev.get("tracking_uri") == hide_credentials(uri):  # a resumed run: the same run
            with contextlib.suppress(Exception):
                client.update_run(prev["run_id"], status="RUNNING")
                run_id = prev["run_id"]
        if run_id is None:
            run_id = client.create_run(exp_id, run_name=info.display_name, tags=info.tags).info.run_id
            params = [Param(k, v) for k, v in config_params(info.config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
                client.log_batch(run_id, params=params[i:i + 100])
        self.run_id = run_id
        where = {"tracking_uri": hide_credentials(uri), "experiment": experiment, "experiment_id": exp_id,
                 "run_id": run_id}
        if uri.startswith(("http://", "https://")):  # a tracking server has a web page for the run
            where["url"] = hide_credentials(f"{uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}")
        return where

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        client = self.client
        for _ in range(2):  # two runs starting together: one creates it, the other finds it
            exp = client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            try:
                return client.create_experiment(name, artifact_location=artifact_location)
            except Exception:  # noqa: BLE001 - created meanwhile: read it again (anything else fails the read)
                time.sleep(0.5)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise RuntimeError(f"MLflow experiment {name!r} could neither be found nor created")
        return exp.experiment_id

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])

    def finish(self, status: str, adapter_dir: Path | None) -> None:
        try:
            if adapter_dir is not None:
                self.client.log_artifacts(self.run_id, str(adapter_dir), "adapter")
        finally:
            self.client.set_terminated(self.run_id, self.STATUS.get(status, "KILLED"))


class TrackioTracker(Tracker):
    name = "trackio"

    def open(self, info: RunInfo) -> dict:
        # where: TRACKIO_DIR, read when trackio is imported (TRL imports it, so in the warm worker already): the job's
        # environment sets it to the workspace's trackio/ unless the admin set it (core.runs.backends)
        os.environ.setdefault("TRACKIO_DIR", str(info.workspace / TRACKIO_DIRNAME))
        prev = (info.previous.get("trackio") or {}).get("id")
        with contextlib.redirect_stdout(io.StringIO()):  # its banner ("trackio show …") is not the run's news
            import trackio
            from trackio.utils import TRACKIO_DIR

            project = os.environ.get("TRACKIO_PROJECT", "").strip() or PROJECT
            # a new run each time, except a resumed one (several workspaces may share one trackio folder)
            self.run = trackio.init(project=project, name=info.display_name, resume="allow" if prev else "never",
                                    embed=False, auto_log_gpu=False, auto_log_cpu=False,
                                    config={**config_params(info.config), **info.tags})
        return {"dir": str(TRACKIO_DIR), "project": project, "run": info.display_name, "id": self.run.id}

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def finish(self, status: str, adapter_dir: Path | None) -> None:
        import trackio

        with contextlib.redirect_stdout(io.StringIO()):
            trackio.finish()  # this run's, and forgets it (else trackio finishes it again, printing, at exit)


class WandbTracker(Tracker):
    name = "wandb"

    def open(self, info: RunInfo) -> dict:
        os.environ.setdefault("WANDB_SILENT", "true")  # its notes to the terminal are not the run's news
        import wandb

        mode = os.environ.get("WANDB_MODE", "").strip().lower()
        if mode not in ("online", "offline", "disabled"):
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        prev = (info.previous.get("wandb") or {}).get("id")
        settings = wandb.Settings(console="off", silent=True, save_code=False, disable_git=True,
                                  init_timeout=WANDB_INIT_TIMEOUT_S)
        tags = [f"fts-run-{info.run_id}", f"objective:{info.config.objective}",
                f"base:{info.config.base_model}"[:64], f"method:{info.config.method}"]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "").strip() or PROJECT,
                              name=info.display_name, dir=str(info.run_dir), mode=mode, tags=tags,
                              config={**config_params(info.config), **info.tags}, settings=settings,
                              **({"id": prev, "resume": "allow"} if prev else {}))
        where = {"mode": mode, "dir": str(Path(self.run.dir).parent) if self.run.dir else str(info.run_dir),
                 "id": self.run.id}
        if mode == "online" and getattr(self.run, "url", None):
            where["url"] = self.run.url
        return where

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def finish(self, status: str, adapter_dir: Path | None) -> None:
        import wandb

        try:
            if adapter_dir is not None:
                art = wandb.Artifact(f"run-{self.run.id}-adapter", type="model")
                art.add_dir(str(adapter_dir))
                self.run.log_artifact(art)
        finally:
            self.run.finish(exit_code=0 if status == "succeeded" else 1)


TRACKER_CLASSES: dict[str, type[Tracker]] = {t.name: t for t in (TensorBoardTracker, MlflowTracker, TrackioTracker,
                                                                  WandbTracker)}


class Reporter:
    """The run's open trackers. Every call is guarded: a tracker that raises is named in one warning line of the log
    and dropped; the run goes on."""

    def __init__(self, info: RunInfo | None = None, trackers: list[Tracker] | None = None,
                 log: Callable[[str], None] = print):
        self.info = info
        self.trackers = list(trackers or [])
        self.log_line = log
        self.where: dict[str, dict] = {}

    @classmethod
    def open(cls, info: RunInfo, names: list[str], log: Callable[[str], None] = print) -> Reporter:
        rep = cls(info, log=log)
        for name in names:
            tracker = TRACKER_CLASSES[name]()
            try:
                rep.where[name] = tracker.open(info)
            except Exception as exc:  # noqa: BLE001 - a missing or unreachable tracker never fails the run
                rep.where[name] = {"error": first_line(exc)}
                rep._warn(name, "could not be opened", exc)
                continue
            rep.trackers.append(tracker)
        if rep.trackers:
            rep.log_line("reporting to " + ", ".join(_where_line(t.name, rep.where[t.name]) for t in rep.trackers))
        rep.save()
        return rep

    def _warn(self, name: str, what: str, exc: BaseException) -> None:
        kind = "missing" if isinstance(exc, ImportError) else "unreachable or failing"
        self.log_line(f"warning: tracker {name} {what} ({kind}: {first_line(exc)}); the run goes on without it")

    def _guard(self, what: str, call) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - the tracker goes, the run stays
                self.trackers.remove(tracker)
                self.where.setdefault(tracker.name, {})["error"] = first_line(exc)
                self._warn(tracker.name, what, exc)
                self.save()

    def log(self, step: int, values: dict[str, Any]) -> None:
        numbers = metric_values(values)
        if numbers and self.trackers:
            self._guard("stopped taking metrics", lambda t: t.log(int(step), numbers))

    def finish(self, status: str, adapter_dir: Path | None = None) -> None:
        """Close every tracker with the run's ending (``succeeded`` / ``failed`` / ``stopped`` …) and, for a run that
        saved one, its adapter folder (a full model is not copied into a tracker)."""
        if not self.trackers:
            return
        self._guard("could not record the ending", lambda t: t.finish(status, adapter_dir))
        for t in self.trackers:
            self.where.setdefault(t.name, {})["status"] = status
        self.trackers = []
        self.save()

    def save(self) -> None:
        if self.info is None or not self.where:
            return
        path = self.info.run_dir / WHERE_FILE
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.where, indent=1), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            self.log_line(f"warning: could not write {path.name}: {exc}")


def _where_line(name: str, where: dict) -> str:
    if name == "tensorboard":
        return f"tensorboard ({where.get('logdir')})"
    if name == "mlflow":
        return f"mlflow (run {where.get('run_id')} in {where.get('tracking_uri')})"
    if name == "wandb":
        return f"wandb ({where.get('mode')}, {where.get('dir')})"
    return f"{name} ({where.get('dir')})"


def read_where(run_dir: Path) -> dict:
    """trackers.json of a run ({} when it reported to none, or the file cannot be read)."""
    try:
        data = json.loads((Path(run_dir) / WHERE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def open_for_run(ctx, config: TrainConfig, log: Callable[[str], None] = print) -> Reporter:
    """The trackers of a run's worker: none on ranks other than 0, none for a config stored before ``report_to``
    existed (it reported to none then, whatever the admin's default is now)."""
    from core.config import get_settings

    names = config.report_to if "report_to" in (ctx.config or {}) else []
    if not names or not ctx.is_main:
        return Reporter(log=log)
    info = RunInfo(run_id=ctx.job_id, name=str(getattr(ctx.job, "name", "") or ""),
                   attempt=int(getattr(ctx.job, "attempt", 1) or 1), run_dir=ctx.dir,
                   workspace=get_settings().workspace, config=config, previous=read_where(ctx.dir))
    return Reporter.open(info, names, log=log)


__all__ = ["PROJECT", "Reporter", "RunInfo", "TRACKER_CLASSES", "config_params", "hide_credentials", "metric_values",
           "open_for_run", "read_where"]
