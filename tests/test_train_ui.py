"""The Train tab's start handler: form values → TrainConfig → memory pre-flight check → queue."""
import json

from sqlmodel import select

from core.config import db_session
from storage import Run
from ui.train_form import config_from_inputs, start_run

FORM = {"name": None, "base_model": "default", "method": "lora", "num_epochs": 1, "max_steps": 3, "learning_rate": 2e-4,
        "batch_size": 2, "max_length": 96, "lora_target_modules": "all-linear", "upload": None}


def _llama_13b_dir(tmp_path):
    """A local model folder with only Llama-2-13b's config.json: enough for the estimator, which never loads weights."""
    d = tmp_path / "llama-2-13b"
    d.mkdir()
    catalog = json.load(open("core/catalog/models.json"))["models"]
    cfg = next(m for m in catalog if m["name"] == "Llama-2-13b")["config"]
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForCausalLM"]}))
    return d


def test_empty_inputs_keep_defaults_and_targets_are_split():
    cfg = config_from_inputs({**FORM, "dataset": " 4 ", "lora_target_modules": "q_proj, v_proj", "seed": None})
    assert cfg.dataset == "4" and cfg.name == "" and cfg.seed == 42 and cfg.lora_target_modules == ["q_proj", "v_proj"]


def test_missing_dataset_is_a_message_not_a_traceback(workspace):
    msg, run_id = start_run({**FORM, "dataset": ""})
    assert run_id is None and msg.startswith("**Error:**") and "choose a dataset" in msg


def test_preflight_warns_before_a_run_that_cannot_fit(workspace, fixtures_dir, tmp_path):
    values = {**FORM, "dataset": str(fixtures_dir / "alpaca_en_demo.json"), "base_model": str(_llama_13b_dir(tmp_path)),
              "method": "full", "max_length": 2048, "batch_size": 8}
    msg, run_id = start_run(values)
    assert run_id is None and msg.startswith("**Warning:**") and "exceeds" in msg and "Tick" in msg
    with db_session() as s:
        assert s.exec(select(Run)).all() == []  # nothing queued until the user overrides



def test_override_skips_the_warning_but_a_weightless_model_is_still_refused(workspace, fixtures_dir, tmp_path):
    values = {**FORM, "dataset": str(fixtures_dir / "alpaca_en_demo.json"), "base_model": str(_llama_13b_dir(tmp_path)),
              "method": "full", "max_length": 2048, "batch_size": 8}
    msg, run_id = start_run(values, skip_preflight=True)
    assert run_id is None and msg.startswith("**Error:**") and "no weights" in msg and "estimated, not trained" in msg


def test_override_starts_a_run_despite_the_warning(workspace, fixtures_dir, default_model_dir, monkeypatch):
    import core.estimate
    from core import runs as jobs

    # a real estimate against a device with (as far as the check is told) only 1 MB free
    real = core.estimate.preflight_check
    monkeypatch.setattr(core.estimate, "preflight_check", lambda cfg: real(cfg, free_bytes=1_000_000))
    values = {**FORM, "dataset": str(fixtures_dir / "alpaca_en_demo.json")}
    msg, run_id = start_run(values)
    assert run_id is None and "exceeds" in msg
    msg, run_id = start_run(values, skip_preflight=True)
    assert run_id == 1 and msg.startswith("Run #1") and "**Warning:**" in msg
    assert jobs.stop(1, timeout_s=60).status == "stopped"


def test_refresh_reads_only_new_metric_rows(workspace):
    """A long run with several tabs open stays cheap: each tick reads the rows it has not seen, not all of them."""
    from sqlalchemy import insert

    from core.runs import store
    from storage import RunMetric
    from ui.train_runs import run_details

    job = store.submit("train", {"dataset": "x", "name": "long"}, name="long")
    with db_session() as s:
        rows = [{"run_id": job.id, "step": i, "loss": 1.0 / i, "lr": 1e-4} for i in range(1, 5001)]
        s.exec(insert(RunMetric), params=rows)
    *_, cache = run_details(str(job.id), None)
    assert cache["rows_read"] == 5000 and len(cache["loss"]) == 5000
    *_, cache = run_details(str(job.id), cache)
    assert cache["rows_read"] == 0  # nothing new: nothing read
    store.add_metric(job.id, step=5001, loss=0.5, lr=1e-4)
    head, loss, lr, _log, _cfg, _err, _lineage, cache = run_details(str(job.id), cache)
    assert cache["rows_read"] == 1 and len(loss) == 5001 and loss["step"].iloc[-1] == 5001
    # a resume replaces the rows after its checkpoint: a new attempt reloads the curve from scratch
    store.drop_metrics_after(job.id, 100)
    with db_session() as s:
        s.exec(Run.__table__.update().where(Run.id == job.id).values(attempt=2))
    *_, cache = run_details(str(job.id), cache)
    assert cache["rows_read"] == 100 and len(cache["loss"]) == 100


def test_a_refresh_sends_only_what_changed_and_a_new_label_reaches_the_run_list(workspace):
    import gradio as gr

    from core.runs import store
    from ui.train_runs import IDLE_REFRESH_S, tick

    job = store.submit("train", {"dataset": "x", "name": "live"}, name="live")
    store.transition(job.id, "starting")
    store.transition(job.id, "running", started_at=store.utcnow())
    store.add_metric(job.id, step=1, loss=2.0, lr=1e-4)
    store.finish(job.id, "succeeded")
    table, choices, head, loss, lr, log, config, outcome, lineage, cache, pace = tick(str(job.id), None)
    assert table["name"].tolist() == ["live"] and choices["choices"] == [(f"#{job.id} live — succeeded", str(job.id))]
    assert len(loss) == 1 and "name: live" in config and f"run #{job.id} 'live'" in lineage
    assert pace.value == IDLE_REFRESH_S  # nothing runs: the page refreshes every few seconds, not every second
    again = tick(str(job.id), cache)
    assert all(x == gr.update() for x in (*again[:9], again[-1]))  # nothing changed: nothing is sent again
    store.rename(job.id, "renamed")  # the list's label changes (as a status change does)
    store.add_metric(job.id, step=2, loss=1.5, lr=1e-4)
    later = tick(str(job.id), again[-2])
    assert later[1]["choices"] == [(f"#{job.id} renamed — succeeded", str(job.id))]
    assert later[0]["name"].tolist() == ["renamed"] and len(later[3]) == 2  # table and curve follow
    assert "name: renamed" in later[6]


def test_a_tick_that_left_before_a_new_run_was_selected_does_not_select_the_old_one_again(workspace):
    """The 1 s refresh carries the selection the page had when it left; the Start button selects the new run in the
    meantime. The tick lands with the new run in its list: it updates the list, and leaves the selection alone (it
    used to send the old run back, and the page jumped to run 1 under load)."""
    from core.runs import store
    from ui.train_runs import REFRESH_S, tick

    first = store.submit("train", {"dataset": "x", "name": "first"}, name="first")
    *_, cache, pace = tick(str(first.id), None)
    assert pace.value == REFRESH_S  # a queued run: every second
    second = store.submit("train", {"dataset": "x", "name": "second"}, name="second")  # started, and selected
    _table, choices, *_rest = tick(str(first.id), cache)  # the tick that left with run 1 selected
    assert [v for _, v in choices["choices"]] == [str(second.id), str(first.id)]
    assert "value" not in choices  # the page's selection (now run 2) stands
    store.transition(second.id, "starting")
    store.transition(second.id, "running", started_at=store.utcnow())
    store.finish(second.id, "failed", error="gone")
    from core.deletion import delete_run

    delete_run(first.id)  # the selected run is gone: the tick picks one
    _table, choices, *_rest = tick(str(first.id), None)
    assert choices["value"] == str(second.id)


def test_a_multi_process_run_says_its_processes_and_nodes_under_its_status():
    from storage import Run
    from ui.train_runs import parallel_note

    assert parallel_note(Run(config={"num_processes": 1})) == ""
    local = parallel_note(Run(config={"num_processes": 2, "distributed": "fsdp"}, worker_host="vm"))
    assert local == '<div class="fts-parallel">2 processes · fsdp</div>'
    on_ray = Run(config={"num_processes": 2, "distributed": "ddp"}, backend="ray", worker_host="a (1f2e), <b> (9c8d)")
    assert parallel_note(on_ray).endswith("2 processes · ddp · on nodes a (1f2e), &lt;b&gt; (9c8d)</div>")
