"""Managing runs (issues 12 and 13): rename, delete with what was made from a run, who may, and the 'Only mine'
filters of the Data, Evaluate and Deploy lists. Real SQLite, real folders, a real job process where one must be
active."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core import runs
from core.config import REPO_ROOT, db_session
from core.deletion import delete_run
from core.runs import JobError, store
from core.train.jobs import rename_run
from storage import Evaluation, Run, RunMetric
from storage.tables import Deployment
from tests.conftest import wait_until


def ended_run(kind: str = "train", *, owner: str = "", parent: int | None = None,
              name: str = "", lr: float = 2e-4, tokens_per_step: int = 100) -> Run:
    """A job that ran and ended, with files in its folder and metric rows (as a worker leaves them)."""
    config = ({"dataset": "demo", "name": name, "max_steps": 3, "learning_rate": lr} if kind == "train"
              else {"run_id": parent})
    run = store.submit(kind, config, name=name, method="lora" if kind == "train" else "", owner=owner,
                       parent_run_id=parent)
    store.transition(run.id, "starting")
    store.transition(run.id, "running", started_at=store.utcnow())
    folder = store.job_path(run.id)
    (folder / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"\0" * 1024)
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 1024)
    (folder / "worker.log").write_text("step 1/3\nstep 2/3\nstep 3/3\n")
    for step in (1, 2, 3):
        store.add_metric(run.id, step=step, loss=lr * 1000 / step, extra={"tokens_seen": step * tokens_per_step})
    store.finish(run.id, "succeeded", adapter_path=str(folder / "adapter"))
    return runs.get_run(run.id)


def evaluation_of(run: Run, owner: str = "") -> tuple[Run, Evaluation]:
    job = ended_run("evaluate", owner=owner, parent=run.id, name=f"eval-run{run.id}")
    examples = store.job_path(job.id) / "examples.jsonl"
    examples.write_text('{"i": 0, "prompt": [{"role": "user", "content": "p"}], "reference": "r", "base": "b", '
                        '"tuned": "r"}\n')
    with db_session() as s:
        ev = Evaluation(job_id=job.id, run_id=run.id, tuned_label=run.name, base_label="base", dataset_ref="1",
                        split="test", n=1, examples_path=str(examples), headline="rougeL", headline_base=0.1,
                        headline_tuned=0.5)
        s.add(ev)
        s.flush()
        s.refresh(ev)
    return job, ev


def count_rows(model, **where) -> int:
    from sqlmodel import select

    with db_session() as s:
        q = select(model)
        for k, v in where.items():
            q = q.where(getattr(model, k) == v)
        return len(s.exec(q).all())


def test_rename_changes_the_name_and_the_config_name_and_refuses_a_bad_one(workspace):
    run = ended_run(name="first")
    renamed = rename_run(run.id, "  support   json v2 ")
    assert renamed.name == "support json v2" and renamed.config["name"] == "support json v2"
    assert runs.get_run(run.id).name == "support json v2"
    with pytest.raises(JobError, match="needs a name"):
        rename_run(run.id, "   ")
    with pytest.raises(JobError, match="at most 80 characters"):
        rename_run(run.id, "x" * 81)
    assert runs.get_run(run.id).name == "support json v2"  # a refusal changes nothing


def test_delete_takes_the_run_its_files_metrics_evaluations_and_exports_and_keeps_continued_runs(workspace):
    run = ended_run(name="to-go")
    eval_job, ev = evaluation_of(run)
    export_job = ended_run("export", parent=run.id)
    continued = ended_run(parent=run.id, name="to-go-cont")
    other = ended_run(name="stays")
    _, other_ev = evaluation_of(other)
    folders = [store.job_path(i) for i in (run.id, eval_job.id, export_job.id)]
    assert all(f.is_dir() for f in folders)

    gone = delete_run(run.id)

    assert sorted(gone["runs"]) == sorted([run.id, eval_job.id, export_job.id]) and gone["evaluations"] == 1
    assert not any(f.exists() for f in folders)
    assert not [p for p in (workspace / "runs").iterdir() if p.name.startswith(".deleting")]
    for rid in gone["runs"]:
        with pytest.raises(JobError, match="not found"):
            runs.get_run(rid)
        assert count_rows(RunMetric, run_id=rid) == 0
    assert count_rows(Evaluation, run_id=run.id) == 0
    # what was not made from it stays whole: a run continued from it (its own adapter), another run and its numbers
    assert runs.get_run(continued.id).adapter_path and store.job_path(continued.id).is_dir()
    assert runs.get_run(other.id).status == "succeeded" and count_rows(RunMetric, run_id=other.id) == 3
    assert count_rows(Evaluation, run_id=other.id) == 1


def test_delete_is_refused_while_the_run_or_a_job_made_from_it_is_active(workspace, monkeypatch):
    monkeypatch.setenv("FTS_JOB_KINDS", "tests.job_kinds")
    run = ended_run(name="busy")
    job = runs.submit("count", {"steps": 400, "sleep_s": 0.05}, parent_run_id=run.id)
    wait_until(lambda: runs.get_run(job.id).step >= 1, 60)
    try:
        with pytest.raises(JobError, match=rf"count job #{job.id} of run {run.id} is running"):
            delete_run(run.id)
        with pytest.raises(JobError, match="stop it before deleting"):
            runs.delete([job.id])
        assert store.job_path(run.id).is_dir() and count_rows(RunMetric, run_id=run.id) == 3  # nothing went
    finally:
        runs.stop(job.id, timeout_s=30)
    assert delete_run(run.id)["runs"] == [run.id, job.id]


def test_delete_is_refused_while_a_deployment_serves_the_run(workspace, monkeypatch):
    # a TGI container on a GPU host that this studio started: no engine answers (this machine's own engine, which the
    # container tests start, would say the container is gone), so it stays as last known
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    run = ended_run(name="served")
    with db_session() as s:
        s.add(Deployment(run_id=run.id, target="tgi", model_ref=f"run:{run.id}", status="running",
                         container_id="0123456789abcdef", created_by="anonymous"))
    with pytest.raises(JobError, match=r"deployment #1 serves run \d+ \(running\): stop it"):
        delete_run(run.id)
    assert store.job_path(run.id).is_dir() and runs.get_run(run.id).status == "succeeded"


def test_the_cli_asks_for_yes_before_it_deletes(workspace):
    run = ended_run(name="cli-run")
    evaluation_of(run)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "core", "runs", *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=120)

    r = cli("delete", str(run.id))
    assert r.returncode == 2 and "nothing deleted: add --yes" in r.stderr and "1 evaluation(s)" in r.stderr
    assert runs.get_run(run.id).status == "succeeded"
    r = cli("rename", str(run.id), "renamed-from-cli")
    assert r.returncode == 0 and runs.get_run(run.id).name == "renamed-from-cli"
    r = cli("delete", str(run.id), "--yes")
    assert r.returncode == 0 and f"deleted run {run.id}" in r.stdout and "1 evaluation(s)" in r.stdout
    r = cli("delete", str(run.id), "--yes")
    assert r.returncode == 2 and "not found" in r.stderr


def test_only_the_owner_or_an_admin_may_rename_or_delete(workspace, monkeypatch):
    from core.users import add_user
    from ui.train_runs import delete_question, manage_run

    monkeypatch.delenv("FTS_AUTH", raising=False)
    monkeypatch.setenv("FTS_USERS_FILE", str(workspace / "users.json"))
    add_user("alice", "alice-password")
    add_user("bob", "bob-password")
    add_user("root", "root-password", admin=True)
    run = ended_run(owner="alice", name="alices")

    msg, _ = manage_run("delete", str(run.id), "bob")
    assert msg.startswith("**Not allowed:**") and "belongs to alice" in msg
    msg, _ = manage_run("rename", str(run.id), "bob", "bobs-now")
    assert "Not allowed" in msg and runs.get_run(run.id).name == "alices"
    question, row = delete_question(str(run.id))
    assert "alices" in question and "go for good" in question and row["visible"] is True
    msg, sel = manage_run("rename", str(run.id), "alice", "alices-v2")
    assert "is now **alices\\-v2**" in msg or "is now **alices-v2**" in msg
    msg, sel = manage_run("delete", str(run.id), "root")  # an admin may
    assert msg.startswith(f"Run #{run.id} deleted") and sel["value"] is None
    assert runs.list_runs(kind="train") == []


def test_tags_are_cleaned_shown_filtered_and_only_the_owner_sets_them(workspace, monkeypatch):
    from core.train.compare import run_label
    from core.train.jobs import tag_run
    from core.users import add_user
    from ui.train_runs import manage_run, runs_frame

    run = ended_run(name="tagged", owner="alice")
    other = ended_run(name="plain")
    assert tag_run(run.id, "Baseline, #demo  demo").tags == ["baseline", "demo"]  # trimmed, lower case, unique
    for bad, why in (("has/slash", "letters, digits"), ("x" * 33, "at most 32"), (" ".join(f"t{i}" for i in range(11)),
                                                                                  "at most 10 tags")):
        with pytest.raises(JobError, match=why):
            tag_run(run.id, bad)
    assert runs.get_run(run.id).tags == ["baseline", "demo"]  # a refused change changes nothing
    shown = runs.run_to_dict(runs.get_run(run.id))
    assert shown["tags"] == ["baseline", "demo"] and shown["objective"] == "sft"
    assert run_label(runs.get_run(run.id)) == f"#{run.id} tagged #baseline #demo"
    names = set(runs_frame()["name"])
    assert {"tagged  #baseline #demo", "plain"} <= names

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "core", "runs", *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=120)

    r = cli("list", "--tag", "#demo", "--json")
    assert r.returncode == 0 and [x["id"] for x in json.loads(r.stdout)] == [run.id]
    r = cli("tag", str(other.id), "ablation")
    assert r.returncode == 0 and runs.get_run(other.id).tags == ["ablation"]
    r = cli("tag", str(other.id))  # no tags: cleared
    assert r.returncode == 0 and runs.get_run(other.id).tags is None

    monkeypatch.delenv("FTS_AUTH", raising=False)
    monkeypatch.setenv("FTS_USERS_FILE", str(workspace / "users.json"))
    add_user("alice", "alice-password")
    add_user("bob", "bob-password")
    msg, _ = manage_run("tag", str(run.id), "bob", "mine-now")
    assert "Not allowed" in msg and runs.get_run(run.id).tags == ["baseline", "demo"]
    msg, _ = manage_run("tag", str(run.id), "alice", "final")
    assert msg == f"Run #{run.id}: #final." and runs.get_run(run.id).tags == ["final"]


def test_only_mine_filters_the_data_evaluate_and_deploy_lists(workspace, fixtures_dir):
    from core.data import import_dataset
    from ui.data import refresh_datasets
    from ui.deploy import deployment_choices, deployments_frame, exports_frame
    from ui.evaluate import evaluation_choices, evaluations_frame

    import_dataset(str(fixtures_dir / "alpaca_en_demo.json"), name="alices-data", owner="alice")
    import_dataset(str(fixtures_dir / "identity.json"), name="bobs-data", owner="bob")
    a_run, b_run = ended_run(owner="alice", name="a"), ended_run(owner="bob", name="b")
    _, a_ev = evaluation_of(a_run, owner="alice")
    _, b_ev = evaluation_of(b_run, owner="bob")
    ended_run("export", owner="bob", parent=b_run.id)
    with db_session() as s:
        s.add(Deployment(run_id=a_run.id, target="vllm", model_ref=f"run:{a_run.id}", status="planned",
                         created_by="alice"))
        s.add(Deployment(target="local", model_ref="default", status="stopped", created_by="anonymous"))

    table, dd = refresh_datasets(None, "alice")
    assert [r[1] for r in table["value"]] == ["alices-data"] and len(dd["choices"]) == 1
    table, dd = refresh_datasets(None, None)
    assert {r[1] for r in table["value"]} == {"alices-data", "bobs-data"}

    ev = evaluations_frame("bob")
    assert ev["id"].tolist() == [b_ev.id] and ev["by"].tolist() == ["bob"]
    assert [v for _, v in evaluation_choices("alice")] == [str(a_ev.id)]
    assert len(evaluations_frame(None)) == 2

    assert exports_frame("alice").empty and exports_frame("bob")["by"].tolist() == ["bob"]
    assert deployments_frame("alice")["by"].tolist() == ["alice"]
    assert len(deployment_choices(None)) == 2
    # a single-user studio's deployments (started by 'anonymous') are the single user's ('')
    assert deployments_frame("")["model"].tolist() == ["default"]


def test_compare_overlays_curves_by_step_or_tokens_diffs_configs_and_sets_headlines_side_by_side(workspace):
    from core.train import compare

    fast = ended_run(name="fast", lr=5e-4, tokens_per_step=200)
    slow = ended_run(name="slow", lr=1e-4, tokens_per_step=100)
    eval_job, _ = evaluation_of(fast)
    old = ended_run(name="old")
    with db_session() as s:  # a run from before tokens were recorded
        for m in s.exec(select_metrics(old.id)).all():
            m.extra = None
            s.add(m)

    rows, notes = compare.curves([fast.id, slow.id], "train loss", "step")
    assert {r["series"] for r in rows} == {f"#{fast.id} fast", f"#{slow.id} slow"} and notes == []
    assert [r["value"] for r in rows if r["series"].endswith("fast")] == pytest.approx([0.5, 0.25, 0.5 / 3])
    rows, notes = compare.curves([fast.id, slow.id, old.id], "train loss", "tokens seen")
    assert [r["x"] for r in rows if r["series"].endswith("fast")] == [200, 400, 600]
    assert [r["x"] for r in rows if r["series"].endswith("slow")] == [100, 200, 300]
    assert notes == [f"#{old.id} old did not record tokens seen (an older run): compare it by step"]
    _, notes = compare.curves([fast.id, slow.id], "reward margin", "step")
    assert len(notes) == 2 and "no reward margin points" in notes[0]

    head, diff = compare.config_diff([fast.id, slow.id])
    assert head == ["field", f"#{fast.id} fast", f"#{slow.id} slow"]
    assert [r[0] for r in diff] == ["learning_rate", "name"]  # only what differs
    assert diff[0][1:] == ["0.0005", "0.0001"]
    head, rows = compare.headlines([fast.id, slow.id])
    by_run = {r[0]: dict(zip(head, r)) for r in rows}
    assert by_run[f"#{fast.id} fast"]["evaluation (base → tuned)"] == "rougeL 0.1000 → 0.5000"
    assert by_run[f"#{slow.id} slow"]["evaluation (base → tuned)"] == ""
    with pytest.raises(JobError, match="not a training run"):
        compare.headlines([fast.id, eval_job.id])
    with pytest.raises(JobError, match="unknown curve"):
        compare.curves([fast.id, slow.id], "banana")

    r = subprocess.run([sys.executable, "-m", "core", "runs", "compare", str(fast.id), str(slow.id), "--curve",
                        "train loss", "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and [d["field"] for d in out["config_diff"]] == ["learning_rate", "name"]
    assert len(out["points"]) == 6 and out["headlines"][0]["run"] == f"#{fast.id} fast"


def select_metrics(run_id: int):
    from sqlmodel import select

    return select(RunMetric).where(RunMetric.run_id == run_id)


@pytest.mark.browser
def test_in_the_browser_alice_renames_and_deletes_her_run_and_filters_to_hers(workspace, monkeypatch, start_app,
                                                                              browser):
    from playwright.sync_api import expect

    from core.users import add_user

    monkeypatch.delenv("FTS_AUTH", raising=False)
    monkeypatch.setenv("FTS_USERS_FILE", str(workspace / "users.json"))
    add_user("alice", "alice-password")
    add_user("bob", "bob-password")
    mine, theirs = ended_run(owner="alice", name="alices-run"), ended_run(owner="bob", name="bobs-run", lr=1e-4)
    third = ended_run(owner="alice", name="alices-other", lr=3e-4)
    _, ev = evaluation_of(mine, owner="alice")
    evaluation_of(theirs, owner="bob")
    url = start_app(workspace / "app.log")

    page = browser.new_context(viewport={"width": 1500, "height": 1400}).new_page()
    page.goto(url)
    page.get_by_label("username").fill("alice")
    page.get_by_label("password").fill("alice-password")
    page.get_by_role("button", name="Login").click()

    page.get_by_role("tab", name="Evaluate", exact=True).click(timeout=60_000)
    table = page.locator("#eval-table")
    expect(table.get_by_role("gridcell", name="bob", exact=True)).to_be_visible(timeout=30_000)
    page.locator("#eval-mine input").check()
    expect(table.get_by_role("gridcell", name="bob", exact=True)).to_have_count(0, timeout=15_000)
    expect(table.get_by_role("gridcell", name="alice", exact=True)).to_be_visible()

    page.get_by_role("tab", name="Train", exact=True).click()
    sel = page.get_by_label("Selected run")
    for _ in range(10):  # the 1 s refresh re-renders the list: a click can land between two renders
        sel.click()
        page.get_by_role("option", name=f"#{mine.id} alices-run", exact=False).first.click()
        page.wait_for_timeout(1200)
        if sel.input_value().startswith(f"#{mine.id} "):
            break
    page.get_by_text("Rename, tag or delete the selected run").click()
    page.locator("#train-new-name textarea, #train-new-name input").first.fill("alices-best")
    page.locator("#train-rename").click()
    expect(page.get_by_text(f"Run #{mine.id} is now")).to_be_visible(timeout=20_000)
    expect(page.get_by_role("gridcell", name="alices-best", exact=True)).to_be_visible(timeout=10_000)
    page.locator("#train-delete").click()
    expect(page.locator("#train-delete-confirm")).to_contain_text("go for good", timeout=10_000)
    page.screenshot(path=str(workspace / "train-delete-confirm.png"), full_page=True)
    page.locator("#train-delete-yes").click()
    expect(page.get_by_text(f"Run #{mine.id} deleted")).to_be_visible(timeout=20_000)
    expect(page.get_by_role("gridcell", name="alices-best", exact=True)).to_have_count(0, timeout=10_000)
    expect(page.get_by_role("gridcell", name="bobs-run", exact=True)).to_be_visible()
    assert [r.id for r in runs.list_runs(kind="train")] == [third.id, theirs.id]

    # compare the two runs that are left: one chart, the config field that differs, the numbers side by side
    page.get_by_text("Compare runs", exact=True).click()
    box = page.locator("#compare-runs")
    for label in (f"#{third.id} alices-other", f"#{theirs.id} bobs-run"):
        box.locator("input").click()
        page.get_by_role("option", name=label).first.click()
        page.wait_for_timeout(500)
    expect(page.locator("#compare-msg")).to_contain_text("2 runs · train loss by step", timeout=20_000)
    diff = page.locator("#compare-diff")
    expect(diff.get_by_role("gridcell", name="learning_rate", exact=True)).to_be_visible(timeout=10_000)
    expect(diff.get_by_role("gridcell", name="0.0003", exact=True)).to_be_visible()
    expect(page.locator("#compare-head")).to_contain_text("rougeL 0.1000 → 0.5000")
    page.locator("#compare-x").get_by_text("tokens seen").click()
    expect(page.locator("#compare-msg")).to_contain_text("train loss by tokens seen", timeout=10_000)
    expect(page.locator("#compare-plot")).to_contain_text(f"#{third.id} alices-other", timeout=10_000)
    page.locator("#compare").screenshot(path=str(workspace / "compare.png"))
    errors = (workspace / "app.log").read_text()
    assert "Traceback" not in errors, errors[-3000:]  # no handler failed on the way (each would be an error toast)
    assert count_rows(Evaluation, run_id=mine.id) == 0 and not store.job_path(mine.id).exists()
