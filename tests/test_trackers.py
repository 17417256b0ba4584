"""Experiment trackers (issue 29): ``report_to`` in the config, the CLI and the admin's default; real tiny-model runs
that write TensorBoard and MLflow (read back with their own libraries and compared with the studio's own curves),
trackio and W&B offline; a tracker that is unreachable or missing warns once and the run goes on; the workspace's
TensorBoard as a managed process on loopback (ports 8770-8779)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

from core import runs
from core.train.config import TrainConfig
from core.train.trackers import config_params, hide_credentials, metric_values
from tests.conftest import REPO, wait_until

ALPACA = str(Path(__file__).parent / "fixtures" / "alpaca_en_demo.json")
CLOSED_PORT = 8779  # nothing listens there in these tests: an MLflow server that does not answer


def tiny_config(model: str, **kw) -> TrainConfig:
    base = dict(dataset=ALPACA, base_model=model, max_steps=4, batch_size=2, max_length=64, lora_r=4, lora_alpha=8,
                save_steps=0, eval_split=0.1, eval_steps=2, logging_steps=1)
    return TrainConfig(**{**base, **kw})


def studio_curves(run_id: int) -> dict[str, list[tuple[int, float]]]:
    """The run's own stored curves as a tracker gets them: {name: [(step, value), …]} row by row."""
    out: dict[str, list] = defaultdict(list)
    for m in runs.run_metrics(run_id):
        row = {k: getattr(m, k) for k in ("epoch", "loss", "eval_loss", "lr", "grad_norm", "tokens_per_s",
                                          "memory_bytes", "wall_time_s")}
        for name, value in metric_values({**row, **(m.extra or {})}).items():
            out[name].append((m.step, float(value)))
    return dict(out)


def assert_same_curves(studio: dict, tracker: dict, rel: float = 0.0) -> None:
    assert sorted(tracker) == sorted(studio)
    for name, points in studio.items():
        got = sorted(tracker[name])
        assert [s for s, _ in got] == sorted(s for s, _ in points), name
        assert [v for _, v in got] == pytest.approx([v for _, v in sorted(points)], rel=rel, abs=0), name


# ---- the config, the CLI, the admin's default (pure) ------------------------------------------------------------

def test_report_to_takes_lists_and_comma_text_and_refuses_unknown_names_in_one_line(monkeypatch, capsys):
    monkeypatch.delenv("FTS_REPORT_TO", raising=False)
    assert TrainConfig(dataset="3").report_to == []
    assert TrainConfig(dataset="3", report_to="mlflow, TensorBoard").report_to == ["tensorboard", "mlflow"]
    assert TrainConfig(dataset="3", report_to=["wandb,trackio", "wandb"]).report_to == ["trackio", "wandb"]
    assert TrainConfig(dataset="3", report_to=["none"]).report_to == []
    for bad, says in (("tensorbord", "unknown tracker 'tensorbord': choose from none, tensorboard, mlflow, trackio, "
                                     "wandb"),
                      (["none", "mlflow"], "'none' means no tracker: it cannot go with mlflow")):
        with pytest.raises(ValueError, match="report_to") as exc:
            TrainConfig.from_dict({"dataset": "3", "report_to": bad})
        assert says in str(exc.value) and "\n" not in str(exc.value)
    # a config stored before report_to existed still loads
    old = {k: v for k, v in TrainConfig(dataset="3").model_dump(mode="json").items() if k != "report_to"}
    assert TrainConfig.model_validate(old).report_to == []
    # the admin's default; a typo in it is dropped with a warning, never an error
    monkeypatch.setenv("FTS_REPORT_TO", "mlflow,tensorboard")
    assert TrainConfig(dataset="3").report_to == ["tensorboard", "mlflow"]
    assert TrainConfig(dataset="3", report_to=[]).report_to == []  # a run that says none means none
    monkeypatch.setenv("FTS_REPORT_TO", "mlflow,tensorbord")
    assert TrainConfig(dataset="3").report_to == ["mlflow"]
    assert "FTS_REPORT_TO" in capsys.readouterr().err
    # the CLI: --report-to a,b; an unknown name: exit 2 with one line
    from core.__main__ import build_parser, main
    from core.jobconfig import flag_values

    args = build_parser().parse_args(["train", "--dataset", "3", "--report-to", "tensorboard,mlflow"])
    assert TrainConfig.from_dict(flag_values(args, args.config_fields)).report_to == ["tensorboard", "mlflow"]
    assert main(["train", "--dataset", "3", "--report-to", "tensorboard,comet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown tracker 'comet'" in err


def test_what_a_tracker_is_given_and_never_shown():
    assert metric_values({"loss": 1.5, "eval_loss": None, "samples": [{"a": 1}], "memory_bytes": 7, "ok": True,
                          "nan": float("nan")}) == {"loss": 1.5, "memory_bytes": 7}
    params = config_params(TrainConfig(dataset="3", report_to="mlflow"))
    assert params["learning_rate"] == "0.0002" and params["report_to"] == '["mlflow"]' and params["dataset"] == "3"
    assert hide_credentials("http://me:s3cret@mlflow.example:5000/x") == "http://***@mlflow.example:5000/x"


# ---- real runs ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_writes_tensorboard_and_mlflow_with_the_studios_curves(workspace, tiny_model_dir, monkeypatch):
    """A tiny-model run with report_to [tensorboard, mlflow] and an eval loss: both trackers hold every curve of the
    studio's with the same names, steps and values (TensorBoard keeps float32), MLflow the whole config as params,
    the tags and the adapter; the run page says where they are. Then the workspace's TensorBoard serves it."""
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from core.train.jobs import submit_training
    from core.train.trackers import read_where

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = runs.wait_for(submit_training(tiny_config(tiny_model_dir, report_to=["tensorboard", "mlflow"],
                                                    name="tracked")).id, timeout_s=300)
    assert run.status == "succeeded", runs.log_tail(run.id)
    studio = studio_curves(run.id)
    assert {"loss", "eval_loss", "lr", "grad_norm", "tokens_seen"} <= set(studio)
    assert [s for s, _ in studio["eval_loss"]] == [2, 4]
    log = runs.log_tail(run.id, max_lines=200)
    assert "warning: tracker" not in log and "reporting to tensorboard" in log
    where = read_where(Path(run.output_dir))

    # TensorBoard: its own reader over the run's event files
    logdir = where["tensorboard"]["logdir"]
    assert logdir == str(workspace / "runs" / str(run.id) / "tensorboard")
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    board = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert_same_curves(studio, board, rel=1e-6)  # float32 in the event files
    assert "config/text_summary" in acc.Tags()["tensors"]

    # MLflow: its client on the workspace's SQLite store
    m = where["mlflow"]
    assert m["tracking_uri"] == f"sqlite:///{workspace / 'mlflow.db'}" and m["experiment"] == "finetune-studio"
    client = MlflowClient(tracking_uri=m["tracking_uri"])
    mrun = client.get_run(m["run_id"])
    flow = {name: [(x.step, x.value) for x in client.get_metric_history(m["run_id"], name)]
            for name in mrun.data.metrics}
    assert_same_curves(studio, flow)  # float64: exactly the stored values
    assert mrun.data.params == config_params(TrainConfig.model_validate(run.config))
    assert mrun.data.tags["fts.run_id"] == str(run.id) and mrun.data.tags["fts.objective"] == "sft"
    assert mrun.data.tags["fts.base_model"] == tiny_model_dir and mrun.info.run_name == f"{run.id}-tracked"
    assert mrun.info.status == "FINISHED"
    assert "adapter/adapter_model.safetensors" in {f.path for f in client.list_artifacts(m["run_id"], "adapter")}

    # the run page: where each one is; the CLI starts the workspace's TensorBoard, which serves this run's curves
    from core.__main__ import main
    from core.train import viewer
    from ui.run_links import on_viewer, trackers_markdown, viewer_markdown

    page = trackers_markdown(run, viewer_url=None)
    assert logdir in page and m["run_id"] in page and "mlflow.db" in page and "start TensorBoard" in page
    assert main(["tensorboard", "--port", "8770"]) == 0
    job = viewer.active_viewer()
    assert job.status == "running" and viewer.url_of(job) == "http://127.0.0.1:8770/"
    with urllib.request.urlopen("http://127.0.0.1:8770/data/runs", timeout=10) as r:
        assert f"{run.id}/tensorboard" in json.loads(r.read())
    page = trackers_markdown(run)
    assert "http://127.0.0.1:8770/?runFilter=%5E" in page and "open in TensorBoard" in page
    assert "8770" in viewer_markdown()
    # a studio restart finds its process dead (killed with the machine): reconciled, the page offers a new one
    os.killpg(job.pid, signal.SIGKILL)
    # the studio starts after the process is gone (a read meanwhile, runs.get_run, would reconcile it as a live
    # studio does: "failed", not "interrupted" — the race that failed this test once)
    from core.runs.backends import get_backend
    from core.runs.store import get as read_row

    wait_until(lambda: get_backend("local").is_alive(job) is False, 30)
    assert runs.reconcile(on_start=True) == [job.id] and read_row(job.id).status == "interrupted"
    assert viewer.active_viewer() is None
    wait_until(lambda: not viewer.answers("http://127.0.0.1:8770/", timeout_s=1), 30)  # its server went with it
    assert "not running" in viewer_markdown()
    assert "8770" not in trackers_markdown(run)
    # the page's buttons start a new one (on the admin's port) and stop it
    monkeypatch.setenv("FTS_TENSORBOARD_PORT", "8771")
    assert "TensorBoard runs" in on_viewer("start")
    again = viewer.active_viewer()
    assert again.id != job.id and viewer.url_of(again) == "http://127.0.0.1:8771/"
    assert viewer.answers(viewer.url_of(again))
    assert "stopped" in on_viewer("stop")
    assert runs.get_run(again.id).status == "stopped"
    # the job records its ending before its process exits: the port closes a moment later
    wait_until(lambda: not viewer.answers(viewer.url_of(again), timeout_s=1), 30)


@pytest.mark.slow
def test_an_unreachable_tracker_warns_once_and_trackio_and_wandb_write_locally(workspace, tiny_model_dir,
                                                                              monkeypatch):
    """MLflow pointed at a loopback port where nothing answers: one warning line, the run succeeds and the other
    trackers get everything — trackio, W&B offline in the run folder — with the studio's values; the W&B key in the
    environment is written nowhere."""
    from core.train.jobs import submit_training
    from core.train.trackers import read_where

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:pw@127.0.0.1:{CLOSED_PORT}")
    key = "local-" + "5f" * 20  # a W&B key in the environment (kept offline here): it lands nowhere
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = runs.wait_for(submit_training(tiny_config(tiny_model_dir, report_to="mlflow,trackio,wandb", max_steps=3,
                                                    eval_split=0.0, eval_steps=0, name="offline")).id, timeout_s=300)
    assert run.status == "succeeded", runs.log_tail(run.id)
    log = runs.log_tail(run.id, max_lines=300)
    warnings = [line for line in log.splitlines() if "warning" in line.lower() and "tracker" in line.lower()]
    assert len(warnings) == 1 and "tracker mlflow could not be opened (unreachable" in warnings[0], log
    assert "Traceback" not in log and "mlflow" not in log.replace(warnings[0], "")  # nothing else of it in the log
    assert "the run goes on without it" in warnings[0] and "pw@" not in log
    where = read_where(Path(run.output_dir))
    assert "127.0.0.1:8779" in where["mlflow"]["error"] and "pw" not in json.dumps(where)
    studio = studio_curves(run.id)
    assert [s for s, _ in studio["loss"]] == [1, 2, 3]

    # trackio: its own storage reads the workspace's project back (a process of its own: trackio reads its folder
    # from the environment when it is imported)
    t = where["trackio"]
    assert t["dir"] == os.environ["TRACKIO_DIR"]  # the suite's (the studio's default: workspace/trackio, below)
    code = ("import json, sys; from trackio.sqlite_storage import SQLiteStorage; "
            f"print(json.dumps(SQLiteStorage.get_logs({t['project']!r}, {t['run']!r}, run_id={t['id']!r}), "
            "default=str))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "TRACKIO_DIR": t["dir"]}, check=True).stdout
    logged = json.loads(out.strip().splitlines()[-1])
    trackio_curves = defaultdict(list)
    for row in logged:
        for k, v in row.items():
            if k not in ("step", "timestamp"):
                trackio_curves[k].append((row["step"], v))
    assert_same_curves(studio, dict(trackio_curves))

    # W&B offline: the run's records in its .wandb file (the log format W&B syncs later)
    w = where["wandb"]
    assert w["mode"] == "offline" and w["dir"].startswith(str(workspace / "runs" / str(run.id) / "wandb"))
    history = wandb_history(next(Path(w["dir"]).glob("run-*.wandb")))
    wb = defaultdict(list)
    for step, row in history.items():
        for k, v in row.items():
            wb[k].append((step, v))
    assert_same_curves(studio, dict(wb))
    page = __import__("ui.train_runs", fromlist=["trackers_markdown"]).trackers_markdown(run, viewer_url=None)
    assert "MLflow: not written" in page and "wandb sync" in page and t["dir"] in page
    # the key is in no file of the workspace (the run folder with W&B's own files, the database, the log)
    assert not [p for p in workspace.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]


def wandb_history(path: Path) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} from a W&B run file: LevelDB-style log blocks of 32 KiB after a 7-byte header,
    records of (crc, length, type) + protobuf ``Record`` (wandb 0.31 ships no Python reader for them)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            chunks.append(buf)
            buf = b""
    out: dict[int, dict] = {}
    for raw in chunks:
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            out[int(items.pop("_step"))] = {k: v for k, v in items.items() if not k.startswith("_")}
    return out


def test_jobs_keep_trackio_in_the_workspace_unless_the_admin_says_where(workspace, monkeypatch):
    from core.runs.backends import job_environment

    monkeypatch.delenv("TRACKIO_DIR", raising=False)
    assert job_environment()["TRACKIO_DIR"] == str(workspace / "trackio")
    monkeypatch.setenv("TRACKIO_DIR", "/srv/trackio")
    assert job_environment()["TRACKIO_DIR"] == "/srv/trackio"


def test_a_missing_tracker_is_one_warning_and_the_others_still_write(tmp_path, monkeypatch):
    """A tracker whose import fails (not installed: Python's own marker for a missing module) is named in one warning
    line; TensorBoard beside it writes its rows."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from core.train.trackers import Reporter, RunInfo, read_where

    monkeypatch.setitem(sys.modules, "wandb", None)
    lines: list[str] = []
    info = RunInfo(run_id=5, name="x", attempt=1, run_dir=tmp_path, workspace=tmp_path,
                   config=TrainConfig(dataset="3", report_to="tensorboard,wandb"))
    rep = Reporter.open(info, ["tensorboard", "wandb"], log=lines.append)
    rep.log(1, {"loss": 2.0, "eval_loss": None})
    rep.log(2, {"loss": 1.0})
    rep.finish("succeeded")
    warnings = [x for x in lines if x.startswith("warning")]
    assert len(warnings) == 1 and "tracker wandb could not be opened (missing" in warnings[0]
    assert read_where(tmp_path)["wandb"] == {"error": warnings[0].split("missing: ")[1].split(");")[0]}
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 2.0), (2, 1.0)]


def test_only_rank_0_of_a_run_that_asked_reports(workspace, monkeypatch):
    """A config stored before report_to existed reports to none whatever the admin's default is now; the ranks other
    than 0 of a multi-process run open no tracker."""
    from core.runs.worker import JobContext
    from core.train.trackers import open_for_run
    from storage import Run

    monkeypatch.setenv("FTS_REPORT_TO", "tensorboard")
    old = JobContext(Run(id=1, kind="train", config={"dataset": "3"}))
    assert open_for_run(old, TrainConfig.model_validate(old.config)).trackers == []
    asked = {"dataset": "3", "report_to": ["tensorboard"]}
    monkeypatch.setenv("RANK", "1")
    rank1 = JobContext(Run(id=2, kind="train", config=asked))
    assert open_for_run(rank1, TrainConfig.model_validate(asked)).trackers == []
    monkeypatch.setenv("RANK", "0")
    rank0 = JobContext(Run(id=2, kind="train", config=asked))
    rank0.dir.mkdir(parents=True)
    rep = open_for_run(rank0, TrainConfig.model_validate(asked), log=lambda line: None)
    assert [t.name for t in rep.trackers] == ["tensorboard"]
    rep.finish("stopped")
    assert (rank0.dir / "trackers.json").is_file() and not (workspace / "runs" / "1").exists()
