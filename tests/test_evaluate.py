"""Evaluate on real parts: a real LoRA run on the demo task (trained once per session), evaluation jobs through the
runs core and the CLI, stored results read back, per-example export, multiple choice, bad input, offline metrics,
Elo arithmetic."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from core.config import REPO_ROOT
from core.evaluate import arena, results
from core.evaluate import metrics as M

pytestmark = pytest.mark.slow


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900, env=env or dict(os.environ))


def test_tuned_beats_base_and_the_evaluation_is_stored(demo_ws):
    run_id = demo_ws["run_id"]
    proc = cli("evaluate", "--run", str(run_id), "--limit", "16", "--max-new-tokens", "48", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    base, tuned, delta = out["base"], out["tuned"], out["delta"]
    print(f"\nfield accuracy base {base['field_accuracy']:.3f} -> tuned {tuned['field_accuracy']:.3f}; "
          f"loss {base['loss']:.3f} -> {tuned['loss']:.3f}; json valid {base['json_valid_rate']:.2f} -> "
          f"{tuned['json_valid_rate']:.2f}")
    assert tuned["field_accuracy"] >= base["field_accuracy"] + 0.3
    assert tuned["loss"] < base["loss"] and tuned["perplexity"] < base["perplexity"]
    assert delta["field_accuracy"] == pytest.approx(tuned["field_accuracy"] - base["field_accuracy"])
    for key in ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match", "json_valid_rate"):
        assert key in base and key in tuned
    assert out["dataset"] == f"run:{run_id}" and out["split"] == "validation" and out["n"] == 16
    assert out["settings"]["max_new_tokens"] == 48 and out["settings"]["temperature"] == 0.0
    # stored: read back without recomputing, and the runs' headline is there
    ev = results.get(out["evaluation_id"])
    assert ev.metrics["tuned"] == tuned and ev.run_id == run_id and ev.headline == "field_accuracy"
    assert results.latest_for_runs([run_id])[run_id].id == ev.id
    shown = json.loads(cli("evaluations", "show", str(ev.id), "--json", "--examples", "2").stdout)
    assert shown["tuned"] == tuned and len(shown["examples"]) == 2
    # every example: prompt, reference, both outputs, per-example scores; exports
    rows = [json.loads(line) for line in results.export(ev, "jsonl").decode().splitlines()]
    assert len(rows) == 16 and all({"prompt", "reference", "base", "tuned", "scores"} <= set(r) for r in rows)
    table = list(csv.DictReader(io.StringIO(results.export(ev, "csv").decode())))
    assert len(table) == 16 and {"prompt", "reference", "base", "tuned", "base score", "tuned score"} <= set(table[0])
    better = results.examples(ev, "tuned better")
    worse = results.examples(ev, "tuned worse")
    assert better and len(better) + len(worse) <= 16
    assert all(r["scores"]["tuned"]["field_accuracy"] > r["scores"]["base"]["field_accuracy"] for r in better)


def test_evaluate_on_a_dataset_the_run_never_saw(demo_ws):
    from core.data import import_demo_task
    from core.evaluate.config import EvalConfig
    from core.evaluate.submit import submit_evaluation
    from core.runs import wait_for

    other = import_demo_task(24, seed=99, model=None)  # new messages, never trained on
    job = submit_evaluation(EvalConfig(run_id=demo_ws["run_id"], dataset=str(other.dataset_id), split="train",
                                       limit=8, max_new_tokens=48))
    job = wait_for(job.id, timeout_s=600)
    assert job.status == "succeeded", job.error
    ev = results.by_job(job.id)
    assert ev.dataset_ref == str(other.dataset_id) and ev.split == "train" and ev.n == 8
    assert ev.metrics["tuned"]["field_accuracy"] > ev.metrics["base"]["field_accuracy"]


def test_multiple_choice_evaluation_scores_like_the_direct_computation(demo_ws, fixtures_dir):
    from core.data import import_dataset
    from core.evaluate.multiple_choice import score_rows, summarise
    from core.generate import ModelCache, ModelSource

    ds = import_dataset(str(fixtures_dir / "mc_arc_style.jsonl"), model=None,
                        split={"validation": 0.0, "test": 0.0})
    proc = cli("evaluate", "--run", str(demo_ws["run_id"]), "--dataset", str(ds.dataset_id), "--split", "train",
               "--multiple-choice", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["kind"] == "multiple_choice" and out["n"] == 24
    from core.data import get_dataset, read_split

    rows = read_split(get_dataset(ds.dataset_id), "train")
    base = ModelCache().slot(ModelSource("base", "default"))
    direct = summarise(score_rows(base.loaded.model, base.loaded.tokenizer, rows, "arc")["model"])
    assert out["base"]["acc"] == direct["acc"] and out["base"]["acc_norm"] == direct["acc_norm"]
    print(f"\nARC-style multiple choice (24 rows): base acc {out['base']['acc']:.3f} / acc_norm "
          f"{out['base']['acc_norm']:.3f}; tuned {out['tuned']['acc']:.3f} / {out['tuned']['acc_norm']:.3f}")


def test_bad_input_is_refused_with_a_reason_and_nothing_queued(demo_ws, fixtures_dir):
    from core import runs
    from core.data import import_dataset, import_records

    before = len(runs.list_runs(kind="evaluate"))
    cases = [
        (("--run", "999"), "run 999 not found"),
        (("--run", str(demo_ws["run_id"]), "--dataset", "999"), "dataset 999 not found"),
        (("--run", str(demo_ws["run_id"]), "--dataset", str(demo_ws["dataset_id"]), "--split", "test"),
         "has no test rows"),
        (("--run", str(demo_ws["run_id"]), "--dataset", str(demo_ws["dataset_id"]), "--multiple-choice"),
         "not in a multiple-choice layout"),
        (("--run", str(demo_ws["run_id"]), "--lm-eval-task", "arc_eazy"), "has no task 'arc_eazy'"),
        (("--model", "/no/such/adapter", "--dataset", "1"), "not found"),
    ]
    for args, needle in cases:
        proc = cli("evaluate", *args)
        assert proc.returncode == 2 and needle in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert len(runs.list_runs(kind="evaluate")) == before
    # a malformed multiple-choice row: refused at import, with its row number
    bad = import_dataset(str(fixtures_dir / "mc_bad.jsonl"), model=None)
    problems = json.dumps(bad.to_dict())
    assert "row 3" in problems or "3" in str(bad.to_dict().get("problems"))
    # a dataset with no reference answers, and a prompt longer than the context: reported, the rest evaluated
    prompts_only = import_records(
        [{"messages": [{"role": "user", "content": f"Describe colour number {i}."}]} for i in range(4)]
        + [{"messages": [{"role": "user", "content": "word " * 9000}]}],
        source="prompts only", format="openai", model=None, drop_invalid=False,
        split={"validation": 0.0, "test": 0.0})
    proc = cli("evaluate", "--run", str(demo_ws["run_id"]), "--dataset", str(prompts_only.dataset_id), "--split",
               "train", "--max-new-tokens", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    notes = " ".join(out["notes"])
    assert "1 row(s) skipped" in notes and "does not fit the model's context" in notes
    assert "no reference answers" in notes and out["n"] == 4


def test_the_harness_task_index_is_kept_between_processes_and_a_broken_copy_rebuilt(tmp_path, monkeypatch):
    """Checking a task name used to read the harness's ~15,000 task files in every process (~8 s a CLI call); the
    index is now kept in the user's cache folder. A half-written or garbled copy is rebuilt from the harness."""
    from core.evaluate.harness import index_cache_path

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = index_cache_path()
    assert path.parent == tmp_path / "finetune-studio"
    path.parent.mkdir()
    path.write_text('{"arc_easy": ["arc_easy", "allenai/ai2_arc"')  # garbled: the next process rebuilds it
    ask = ("from core.evaluate import harness as H\n{prep}\nprint(H.task_info('arc_easy'))\n"
           "try:\n    H.task_info('arc_eazy')\nexcept Exception as e:\n    print(e)")
    rebuilt = subprocess.run([sys.executable, "-c", ask.format(prep="")], cwd=REPO_ROOT, env=dict(os.environ),
                             capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0 and len(json.loads(path.read_text())) > 10_000, rebuilt.stderr
    # a process that cannot read the harness's task files at all answers from the kept index, the same
    blind = subprocess.run([sys.executable, "-c", ask.format(prep="H._task_manager = None  # no harness scan")],
                           cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert blind.returncode == 0, blind.stderr
    assert blind.stdout == rebuilt.stdout
    assert "'dataset_path': 'allenai/ai2_arc'" in blind.stdout and "has no task 'arc_eazy'" in blind.stdout


def test_an_lm_eval_task_offline_says_exactly_what_is_missing(demo_ws, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    proc = cli("evaluate", "--run", str(demo_ws["run_id"]), "--lm-eval-task", "arc_easy", "--limit", "4", "--json")
    assert proc.returncode == 1
    job = json.loads(proc.stdout)["job"]
    assert job["status"] == "failed"
    assert job["error"].startswith("lm-eval task 'arc_easy' needs the dataset allenai/ai2_arc (config 'ARC-Easy') "
                                   "from the Hugging Face Hub, which this machine cannot reach")
    assert "multiple-choice mode" in job["error"]


def test_offline_metrics_agree_with_the_libraries_they_wrap():
    import sacrebleu
    from rouge_score import rouge_scorer

    preds = ["the cat sat on the mat", "a quick brown fox"]
    refs = ["the cat is on the mat", "the quick brown fox jumps"]
    m = M.text_metrics(preds, refs)
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert m["rougeL"] == pytest.approx(100 * sum(scorer.score(r, p)["rougeL"].fmeasure
                                                  for p, r in zip(preds, refs)) / 2)
    same = M.text_metrics(refs, refs)
    assert same["rouge1"] == same["rougeL"] == pytest.approx(100) and same["exact_match"] == 1.0
    j = M.json_metrics(['{"a": 1, "b": "X"}', "not json"], [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}])
    assert j["json_valid_rate"] == 0.5 and j["field_accuracy"] == 0.5 and j["per_field"] == {"a": 0.5, "b": 0.5}


def test_elo_arithmetic(workspace):
    a, b = arena.elo_update(1000, 1000, "a")
    assert (a, b) == (1016.0, 984.0)
    a2, b2 = arena.elo_update(1000, 1000, "tie")
    assert (a2, b2) == (1000.0, 1000.0)
    a3, b3 = arena.elo_update(1200, 1000, "b")  # an upset moves more
    assert a3 == pytest.approx(1200 - 32 * 0.7597, abs=0.01) and a3 + b3 == pytest.approx(2200)
    arena.record_vote(prompt="p", output_a="x", output_b="y", model_a="default", model_b="run:1", winner="b")
    arena.record_vote(prompt="p", output_a="x", output_b="y", model_a="run:1", model_b="default", winner="a")
    arena.record_vote(prompt="p", output_a="x", output_b="y", model_a="run:1", model_b="default", winner="both_bad")
    board = {s.model: s for s in arena.leaderboard()}
    assert board["run:1"].wins == 2 and board["default"].losses == 2 and board["run:1"].both_bad == 1
    assert board["run:1"].rating > 1000 > board["default"].rating and board["run:1"].votes == 3
    with pytest.raises(ValueError, match="same model"):
        arena.record_vote(prompt="p", output_a="x", output_b="y", model_a="run:1", model_b="run:1", winner="a")
