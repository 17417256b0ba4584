"""Lineage and the "improve from feedback" loop (issue 28), with real parts: a dataset version, a 2-step tiny-model
run, its evaluation, a safetensors export (merged folder) and a planned vLLM deployment of it — all real jobs and
rows — walked both ways by core.lineage, shown on the run's page after a reload (read from the database), written
into the export folder and the Hub model card, named by the delete paths; then votes → preference data → a 2-step
DPO run continued from the run (CLI), evaluated on the same held-out rows, and the step's "what changed" report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import runs
from tests.conftest import workspace_env

SMALL = {"max_steps": 2, "batch_size": 1, "max_length": 256, "lora_r": 4, "lora_alpha": 8, "save_steps": 0,
         "logging_steps": 1}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_model_dir):
    """dataset → run (2 steps) → evaluation (2 rows) → export (safetensors) → deployment (vLLM, planned: no Docker
    engine here)."""
    import os

    from core.data import import_demo_task
    from core.deploy.container_deployments import deploy_container
    from core.deploy.export import submit_export
    from core.evaluate.submit import submit_evaluation
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training
    from tests.conftest import SHARED_MODELS

    ws = tmp_path_factory.mktemp("lineage") / "ws"
    saved = {k: os.environ.get(k) for k in ("DOCKER_HOST", "FTS_MODELS_DIR")}
    os.environ.update(DOCKER_HOST="unix:///nonexistent/docker.sock", FTS_MODELS_DIR=str(SHARED_MODELS))
    try:
        with workspace_env(ws):
            ds = import_demo_task(24, seed=1, model=None)
            run = submit_training(TrainConfig(dataset=str(ds.dataset_id), base_model=tiny_model_dir, name="base-run",
                                              **SMALL))
            run = runs.wait_for(run.id, timeout_s=300, poll_s=0.3)
            assert run.status == "succeeded", runs.log_tail(run.id)
            ev_job = runs.wait_for(submit_evaluation({"run_id": run.id, "limit": 2, "max_new_tokens": 4}).id,
                                   timeout_s=300, poll_s=0.3)
            assert ev_job.status == "succeeded", runs.log_tail(ev_job.id)
            export = runs.wait_for(submit_export({"run_id": run.id, "format": "safetensors"}).id, timeout_s=300,
                                   poll_s=0.3)
            assert export.status == "succeeded", runs.log_tail(export.id)
            dep = deploy_container(f"run:{run.id}", "vllm", gpu="l4")["deployment"]
            assert dep["status"] == "planned"
            yield {"ws": ws, "dataset_id": ds.dataset_id, "hash": ds.content_hash, "run": run,
                   "evaluation_id": ev_job.final_metrics["evaluation_id"], "export": export, "deployment_id": dep["id"],
                   "tiny": tiny_model_dir}
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_lineage_both_ways_after_a_reload_in_the_export_folder_and_the_hub_card(chain, capsys):
    from core.__main__ import main
    from core.deploy.hub import lineage_json, model_card
    from core.lineage import lineage
    from storage import reset_engines
    from ui.train_runs import run_details

    run = chain["run"]
    assert run.dataset_hash == chain["hash"] and run.dataset_hash  # recorded at submit
    lin = lineage("run", run.id)
    up = {(i["relation"], i["node"]["type"]): i["node"] for i in lin["ancestors"]}
    assert up[("trained on", "dataset")]["id"] == chain["dataset_id"]
    assert up[("trained on", "dataset")]["hash"] == chain["hash"] and up[("trained on", "dataset")]["version"] == 1
    down = {i["node"]["type"]: i for i in lin["descendants"]}
    assert down["evaluation"]["node"]["id"] == chain["evaluation_id"]
    assert down["export"]["node"]["id"] == chain["export"].id
    # the deployment serves the export's merged folder: it hangs under the export, not twice
    assert [d["node"]["id"] for d in down["export"]["descendants"]] == [chain["deployment_id"]]
    assert "deployment" not in down
    # from the other end: the deployment's ancestors reach the dataset and its hash
    dep = lineage("deployment", chain["deployment_id"])
    export = dep["ancestors"][0]
    assert export["relation"] == "serves the output of" and export["node"]["id"] == chain["export"].id
    assert export["ancestors"][0]["node"]["id"] == run.id
    assert export["ancestors"][0]["ancestors"][0]["node"]["hash"] == chain["hash"]

    # the run's page, after a reload: a fresh engine, a fresh page cache — read from the database
    reset_engines()
    *_, outcome, lineage_md, _cache = run_details(str(run.id), None)
    assert 'id="train-lineage-text"' in lineage_md and f"dataset #{chain['dataset_id']} 'demo-support-json' v1" \
        in lineage_md and chain["hash"][:12] in lineage_md
    for text in (f"evaluation #{chain['evaluation_id']} (generation)", f"export #{chain['export'].id} (safetensors",
                 f"deployment #{chain['deployment_id']} (vllm, planned)"):
        assert text in lineage_md, lineage_md

    # the export folder: lineage.json and a README section
    out = Path(chain["export"].final_metrics["output"])
    doc = json.loads((out / "lineage.json").read_text())
    assert doc["export"]["id"] == chain["export"].id and doc["export"]["status"] == "succeeded"
    assert doc["ancestors"][0]["node"]["id"] == run.id
    assert doc["ancestors"][0]["ancestors"][0]["node"]["hash"] == chain["hash"]
    readme = (out / "README.md").read_text()
    assert readme.count("## Lineage") == 1 and f"run #{run.id} 'base-run'" in readme and chain["hash"][:12] in readme
    # the Hub push's model card and lineage.json
    card = model_card(run, what="merged", repo_id="me/x")
    assert "## Lineage" in card and f"dataset #{chain['dataset_id']}" in card and chain["hash"][:12] in card
    assert json.loads(lineage_json(run))["ancestors"][0]["node"]["hash"] == chain["hash"]

    # the CLI, every kind; bad input is one line and exit 2
    assert main(["lineage", "--run", str(run.id), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["node"]["id"] == run.id
    assert main(["lineage", "--dataset", str(chain["dataset_id"])]) == 0
    said = capsys.readouterr().out
    assert f"trained: run #{run.id} 'base-run'" in said and "Made from it:" in said
    for flag, key in (("--evaluation", chain["evaluation_id"]), ("--export", chain["export"].id),
                      ("--deployment", chain["deployment_id"])):
        assert main(["lineage", flag, str(key)]) == 0
        assert f"run #{run.id}" in capsys.readouterr().out
    assert main(["lineage", "--export", str(run.id)]) == 2  # a training run is not an export job
    err = capsys.readouterr().err
    assert f"export job {run.id} not found" in err and err.count("\n") == 1


def test_improve_from_feedback_votes_to_a_dpo_run_evaluated_on_the_same_rows(chain, capsys):
    from core.__main__ import main
    from core.data import get_dataset
    from core.evaluate import arena
    from core.lineage import lineage
    from core.train.compare import step_report
    from core.train.improve import evaluate_like_parent, feedback_available
    from ui.run_improve import feedback_text, playground_pair
    from ui.train_runs import run_details

    run = chain["run"]
    assert main(["improve", "--run", str(run.id), "--steps", "2"]) == 2  # no votes yet: says what to do
    assert "no votes" in capsys.readouterr().err
    # votes through the studio's vote store (the Playground's): the run's JSON answer beats the base's prose
    for i, prompt in enumerate(("Order 12 never arrived", "Refund please", "Where is my parcel?")):
        arena.record_vote(prompt=prompt, output_a=f'{{"intent": "refund", "order": {i}}}', output_b="no idea",
                          model_a=f"run:{run.id}", model_b="default", winner="a" if i else "tie")
    arena.record_vote(prompt="Hi", output_a="Hello!", output_b="Hey.", model_a="default", model_b="run:999",
                      winner="a")  # not about this run
    avail = feedback_available(run.id)
    assert avail["votes"] == 3 and avail["pairs"] == 2 and avail["left_out"]["tie"] == 1
    assert "3 vote(s) on run" in feedback_text(str(run.id)) and "2 preference pair(s)" in feedback_text(
        str(run.id))

    assert main(["improve", "--run", str(run.id), "--objective", "dpo", "--steps", "2", "--wait", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    new = runs.get_run(out["run_id"])
    assert new.status == "succeeded" and new.step == 2 and new.parent_run_id == run.id, runs.log_tail(new.id)
    assert (new.config["objective"], new.config["init_adapter"]) == ("dpo", run.adapter_path)
    ds = get_dataset(out["dataset_id"])
    assert ds.kind == "preference" and ds.rows == 2 and out["rows"] == 2 and new.dataset_hash == ds.content_hash
    assert ds.meta["feedback"]["model"] == f"run:{run.id}"

    job = runs.wait_for(evaluate_like_parent(new.id).id, timeout_s=300, poll_s=0.3)
    assert job.status == "succeeded", runs.log_tail(job.id)
    rep = step_report(new.id)
    assert rep["objective"] == "dpo" and rep["parent_objective"] == "sft" and rep["rows"] == 2
    assert rep["evaluations"] == [chain["evaluation_id"], job.final_metrics["evaluation_id"]]
    assert rep["rows_scored"] == 2 and rep["margin"] is not None and "3 Playground votes" in rep["feedback"]
    *_, outcome, lineage_md, _ = run_details(str(new.id), None)
    assert "What this step changed" in outcome and f"continued run #{run.id}" in outcome
    assert f"continued from: run #{run.id}" in lineage_md and "made from: 2 Playground votes" in lineage_md
    assert playground_pair(str(new.id))[:2] == (f"run:{run.id}", f"run:{new.id}")
    # the parent's lineage now reaches the votes' dataset and the continued run
    kinds = {(i["relation"], i["node"]["id"]) for i in lineage("run", run.id)["descendants"]}
    assert ("continued as", new.id) in kinds and ("voted on, made into", ds.id) in kinds


def test_deleting_names_what_came_from_it(chain, capsys):
    from core.__main__ import main
    from core.data import delete_dataset
    from core.lineage import lineage
    from ui.train_runs import delete_question, manage_run

    run = chain["run"]
    question, _row = delete_question(str(run.id))
    assert (f"has an evaluation (#{chain['evaluation_id']}), an export (#{chain['export'].id}), a deployment "
            f"(#{chain['deployment_id']})") in question
    assert "continued run" in question  # the DPO run of the test before, when it ran
    assert main(["runs", "delete", str(run.id)]) == 2
    err = capsys.readouterr().err
    assert f"run {run.id} has an evaluation" in err and err.count("\n") == 1
    said, _ = manage_run("delete", str(run.id), "")
    assert f"Run #{run.id} deleted" in said and "It had: run" in said
    child = next(r for r in runs.list_runs(kind="train") if r.parent_run_id == run.id)
    up = {i["relation"]: i["node"] for i in lineage("run", child.id)["ancestors"]}
    assert up["continued from"] == {"type": "run", "id": run.id, "missing": True}
    # a deleted dataset: the runs made from it keep its id and content hash
    assert "has " in delete_dataset(child.dataset_ref)
    up = {i["relation"]: i["node"] for i in lineage("run", child.id)["ancestors"]}
    assert up["trained on"]["missing"] and up["trained on"]["hash"] == child.dataset_hash
