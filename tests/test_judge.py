"""The LLM judge (issue 28): its arithmetic (Cohen's κ against a hand-computed table, percent agreement, both orders and
position flips, robust reading of verdicts and scores), a judge job over real votes stored through the Playground's
vote function — the embedded model through the CLI's ``--json``, the tiny model in rubric mode over an evaluation —,
the agreement recomputed from what the job stored, bad input refused with exit code 2, and the admin's endpoint
judge against the studio's own local server on a loopback port with its key never stored, logged or shown."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import runs
from core.evaluate import arena, results
from core.evaluate import judge_scores as J
from core.evaluate.judge import (
    ENDPOINT_KEY_ENV,
    ENDPOINT_MODEL_ENV,
    ENDPOINT_URL_ENV,
    judge_items,
    judgements,
    questions,
    resolve_judge,
    submit_judge,
    summarise,
)
from core.generate import GenerateError
from storage import Evaluation

REPO_ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, env=env or dict(os.environ))


# ---- the arithmetic (pure) ---------------------------------------------------------------------------------------
def test_cohens_kappa_and_agreement_against_hand_computed_tables():
    # 50 items: both "yes" 20, first yes / second no 5, first no / second yes 10, both "no" 15.
    # p_o = 35/50 = 0.7; first says yes 25/50, second 30/50: p_e = 0.5*0.6 + 0.5*0.4 = 0.5; κ = 0.2/0.5 = 0.4
    x = ["yes"] * 25 + ["no"] * 25
    y = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert J.percent_agreement(x, y) == pytest.approx(0.7)
    assert J.cohens_kappa(x, y) == pytest.approx(0.4)
    # three labels, as the judge uses them: p_o = 4/6; p_e = (2*2 + 2*3 + 2*1)/36 = 1/3; κ = (2/3-1/3)/(2/3) = 0.5
    people = ["a", "a", "b", "b", "tie", "tie"]
    judge = ["a", "b", "b", "b", "tie", "a"]
    assert J.percent_agreement(people, judge) == pytest.approx(4 / 6)
    assert J.cohens_kappa(people, judge) == pytest.approx(0.5)
    assert J.cohens_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert J.cohens_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert J.cohens_kappa(["a", "a"], ["a", "a"]) is None  # one label throughout: κ is undefined, not 1
    assert J.cohens_kappa([], []) is None and J.percent_agreement([], []) is None
    with pytest.raises(ValueError, match="same items"):
        J.percent_agreement(["a"], [])
    block = J.agreement_block(people, judge, flips=1, pairs_both_orders=4)
    assert block["n"] == 6 and block["position_flip_rate"] == 0.25 and "too few" in block["warning"]
    many = J.agreement_block(["a", "b"] * 15, ["a", "b"] * 15, 0, 30)
    assert many["kappa"] == pytest.approx(1.0) and many["warning"] is None
    assert "disagrees with people" in J.agreement_block(["a", "b"] * 15, ["b", "a"] * 15, 0, 30)["warning"]
    assert "no votes" in J.agreement_block([], [], 0, 0)["warning"]


@pytest.mark.parametrize(("reply", "verdict"), [
    ("A", "a"), ("B.", "b"), ("TIE", "tie"), ("[[B]]", "b"), ("**A**", "a"), ("Answer A is better.", "a"),
    ("The winner is: Answer B", "b"), ("Verdict: tie", "tie"), ("Both are equally good.", "tie"),
    ("A\nBecause B is too short.", "a"), ("I think answer (B) is better than A", "b"),
    ("A:\nParis.\n\nB:\nLyon.", None),  # the model echoing the answers: a label is not a verdict
    ("A is better.\nB is better.", None), ("A or B", None), ("a good question", None), ("", None), (None, None),
])
def test_pairwise_replies_are_read_or_counted_unparseable(reply, verdict):
    assert J.parse_pairwise(reply) == verdict


@pytest.mark.parametrize(("reply", "score"), [
    ("4", 4), ("Score: 5", 5), ("score of 3/5", 3), ("I rate it 2 out of 5.", 2), ("[[1]]", 1),
    ("The answer deserves a 3.", 3), ("Score: 7", None), ("10/10", None), ("3.5", None), ("Scores: 4, 5, 5", None),
    ("Rubric: 5 is correct, 1 is wrong", None), ("", None),
])
def test_rubric_scores_are_read_robustly_or_counted_unparseable(reply, score):
    assert J.parse_rubric(reply) == score


def test_both_orders_cancel_position_bias_and_a_flip_is_a_tie():
    assert J.combine_orders("a", "a") == ("a", False)
    assert J.combine_orders("a", "b") == ("tie", True)  # the judge picked a position, not an answer
    assert J.combine_orders("tie", "a") == ("tie", False) and J.combine_orders(None, "b") == ("tie", False)
    items = [{"from": "vote", "vote_id": 1, "prompt": [{"role": "user", "content": "Q"}], "a": "x", "b": "y",
              "model_a": "m1", "model_b": "m2", "human": "a", "reference": None},
             {"from": "vote", "vote_id": 2, "prompt": [{"role": "user", "content": "Q2"}], "a": "u", "b": "v",
              "model_a": "m1", "model_b": "m2", "human": "b", "reference": None}]
    asked = questions(items, "pairwise", None)
    assert [(k, w) for k, w, _ in asked] == [(0, "ab"), (0, "ba"), (1, "ab"), (1, "ba")]
    assert "Answer A:\ny" in asked[1][2][1]["content"]  # the swapped order shows B's answer as A
    # item 0: "A" then (swapped) "B" = the same answer both times; item 1: "A" both times = a flip
    judged = judge_items(items, asked, ["A", "B", "A", "A"], "pairwise")
    assert [r["verdict"] for r in judged] == ["a", "tie"] and judged[1]["position_flip"]
    s = summarise(judged, [], "pairwise")
    assert (s["agreement"], s["n"], s["position_flip_rate"], s["unparseable"]) == (0.5, 2, 0.5, 0)
    assert s["scores"]["m1"] == {"wins": 1, "losses": 0, "ties": 1, "win_rate": 0.75}
    rubric = judge_items(items, questions(items, "rubric", "be right"), ["Score: 4", "2", "nonsense", "5"],
                         "rubric")
    assert [r["verdict"] for r in rubric] == ["a", "tie"] and summarise(rubric, [], "rubric")["unparseable"] == 1


# ---- a judge job over real votes -------------------------------------------------------------------------------
def _votes() -> list[int]:
    """Votes stored the way the Playground stores them (core.evaluate.arena.record_vote)."""
    cast = [("a", "What is the capital of France?", "Paris.", "Lyon."),
            ("b", "What is 2 + 2?", "5", "4"),
            ("tie", "Say hello.", "Hello!", "Hi!"),
            ("both_bad", "Name a prime number.", "9", "15")]
    return [arena.record_vote(prompt=p, output_a=a, output_b=b, model_a="default", model_b="run:1", winner=w).id
            for w, p, a, b in cast]


def test_the_embedded_model_judges_the_votes_through_the_cli(workspace, capsys):
    from core.__main__ import main

    assert main(["judge", "--votes", "--judge", "default", "--json"]) == 2  # no votes yet: bad input
    assert "no votes yet" in capsys.readouterr().err
    ids = _votes()
    assert main(["judge", "--votes", "--judge", "default", "--limit", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"agreement", "kappa", "n", "position_flip_rate", "scores", "unparseable"} <= set(out)
    assert out["n"] == 4 and out["mode"] == "pairwise" and out["pairs_both_orders"] == 4 and out["replies"] == 8
    # the agreement figure, whatever its value, is the one the stored votes and the stored verdicts give
    job = runs.get_run(out["job_id"])
    judged = judgements(job)
    assert [r["vote_id"] for r in judged] == ids and all(set(r["replies"]) == {"ab", "ba"} for r in judged)
    people = [J.human_verdict(v.winner) for v in arena.all_votes()]
    assert people == ["a", "b", "tie", "tie"] == [r["human"] for r in judged]
    verdicts = [r["verdict"] for r in judged]
    assert out["agreement"] == pytest.approx(J.percent_agreement(people, verdicts))
    kappa = J.cohens_kappa(people, verdicts)
    assert out["kappa"] is None if kappa is None else out["kappa"] == pytest.approx(kappa)
    assert out["position_flip_rate"] == pytest.approx(sum(r["position_flip"] for r in judged) / 4)
    assert out["warning"] and "too few" in out["warning"]  # 4 votes: never enough to trust a judge
    print(f"\nembedded judge on 4 votes: agreement {out['agreement']}, kappa {out['kappa']}, flips "
          f"{out['position_flip_rate']}, unparseable {out['unparseable']}/8; replies {[r['replies'] for r in judged]}")


def test_bad_judge_input_is_refused_with_one_line_and_nothing_queued(workspace, capsys):
    from core.__main__ import main

    _votes()
    for args, why in [(("--judge", "http://169.254.169.254/v1"), "set by the studio's admin"),
                      (("--judge", "endpoint"), "no judge endpoint is configured"),
                      (("--judge", "deployment:9"), "deployment 9 not found"),
                      (("--judge", "default", "--mode", "rubric"), "rubric mode needs a rubric"),
                      (("--judge", "/no/such/model"), "")]:
        assert main(["judge", "--votes", *args, "--json"]) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and why in err, (args, err)
    assert main(["judge", "--evaluation", "99", "--judge", "default"]) == 2
    assert "99" in capsys.readouterr().err
    assert runs.list_runs(kind="judge") == []
    # the real CLI process: argparse's own refusal (neither --votes nor --evaluation) is exit code 2 as well
    proc = cli("judge", "--judge", "default")
    assert proc.returncode == 2 and "--votes" in proc.stderr


def _evaluation(ws) -> int:
    examples = [
        {"i": 0, "prompt": [{"role": "user", "content": "Name?"}], "reference": '{"name": "Ada"}',
         "base": "Ada", "tuned": '{"name": "Ada"}'},
        {"i": 1, "prompt": [{"role": "user", "content": "Age?"}], "reference": None, "base": "36", "tuned": "37"},
        {"i": 2, "prompt": [{"role": "user", "content": "Too long"}], "reference": "x", "note": "skipped: too long"},
    ]
    path = ws / "examples.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return results.save(Evaluation(kind="generation", name="e", base_label="default", tuned_label="run #1",
                                   dataset_ref="3", split="test", n=3, examples_path=str(path))).id


def test_a_rubric_judge_scores_an_evaluation_and_is_measured_on_the_votes(workspace, tiny_model_dir, capsys):
    from core.__main__ import main

    _votes()
    ev_id = _evaluation(workspace)
    assert main(["judge", "--evaluation", str(ev_id), "--judge", tiny_model_dir, "--mode", "rubric", "--rubric",
                 "5: the answer is correct JSON; 1: it is wrong"]) == 0
    text = capsys.readouterr().out
    assert f"on evaluation #{ev_id}: agreement with people" in text and "Cohen's κ" in text and "warning:" in text
    job = runs.list_runs(kind="judge")[0]
    assert job.status == "succeeded", job.error
    m = job.final_metrics
    assert (m["votes_judged"], m["examples_judged"], m["n"]) == (4, 2, 4)  # the skipped row has no answers
    # every answer scored once: 4 votes x 2 answers + 2 examples x (base, tuned) + 1 reference
    assert m["replies"] == 13 and 0 <= m["unparseable"] <= 13 and m["position_flip_rate"] is None
    assert set(m["scores"]) == {"base", "tuned", "reference"} and m["scores"]["reference"]["answers"] == 1
    assert m["agreement"] is not None and m["warning"]
    judged = judgements(job)
    assert len(judged) == 6 and all(isinstance(r["replies"]["a"], str) for r in judged)
    # the Evaluate tab's Judge section: the scores with the agreement beside them, the warning, every reply as text
    from ui.judge import ON_EVALUATION, judge_choices, judge_result, start_judge

    head, scores, agreement, table = judge_result(str(job.id))
    assert f"on evaluation #{ev_id}" in head and "mean score (1-5)" in scores and "| reference |" in scores
    assert "Cohen's κ" in agreement and "| n (votes) | **4** |" in agreement and "Warning: only 4 vote" in agreement
    assert len(table) == 6 and list(table["judged"])[-2:] == ["example #0", "example #1"]
    assert ("the embedded model (default)", "default") in judge_choices()
    assert "Pick a judge" in start_judge("", "pairwise", "", ON_EVALUATION, str(ev_id), 5)[0]
    assert "Select an evaluation" in start_judge("default", "pairwise", "", ON_EVALUATION, None, 5)[0]
    msg, none = start_judge("http://127.0.0.1:8759/v1", "pairwise", "", ON_EVALUATION, str(ev_id), 5)
    assert none is None and msg.startswith("**Error:**") and "URL" in msg


def test_only_hugging_faces_own_servers_get_the_hub_token():
    """A deployment's server (local, container, TGI, vLLM) is sent ``no-key``, so huggingface_hub's client does not
    fall back to this machine's Hugging Face token; an Inference Endpoint keeps the client's default (the token)."""
    from core.generate.remote import NO_KEY, _api_key
    from core.generate.sources import ModelSource

    def key(url):
        return _api_key(ModelSource(label="d", base="m", endpoint=url))

    assert key("http://127.0.0.1:8000/v1") == NO_KEY and key("http://gpu-host.example:8080/v1") == NO_KEY
    assert key("https://huggingface.co.evil.example/v1") == NO_KEY
    assert key("https://abc123.us-east-1.aws.endpoints.huggingface.cloud/v1") is None


# ---- the admin's endpoint: a real OpenAI-compatible server on loopback, its key never kept ----------------------
def test_the_endpoint_judge_is_the_admins_and_its_key_is_never_stored(workspace, tiny_model_dir, monkeypatch):
    from core.deploy import deployments as D
    from core.generate.remote import NO_KEY, _api_key

    secret = "sk-judge-" + "7f3a9c1e5b2d8f40"  # a made-up key the test hunts for
    monkeypatch.setenv(ENDPOINT_KEY_ENV, secret)
    monkeypatch.setenv(ENDPOINT_URL_ENV, "ftp://example.org/v1")
    with pytest.raises(GenerateError, match="http"):
        resolve_judge("endpoint")
    dep = D.start_local(tiny_model_dir, port=8750, wait=False)
    try:
        dep = D.wait_healthy(dep.id)
        assert dep.status == "running", dep.error
        monkeypatch.setenv(ENDPOINT_URL_ENV, dep.url)
        monkeypatch.setenv(ENDPOINT_MODEL_ENV, dep.served_name)
        src = resolve_judge("endpoint")
        assert src.endpoint == dep.url and src.api_key_env == ENDPOINT_KEY_ENV and secret not in repr(src)
        # the studio's own server gets no key either: never this machine's Hugging Face token
        assert _api_key(src) == secret and _api_key(resolve_judge(f"deployment:{dep.id}")) == NO_KEY
        _votes()
        job = runs.wait_for(submit_judge({"judge": "endpoint", "limit": 2, "max_new_tokens": 4}).id, timeout_s=300)
        assert job.status == "succeeded", job.error
        judged = judgements(job)
        assert len(judged) == 2 and all(set(r["replies"]) == {"ab", "ba"} for r in judged)
        assert job.final_metrics["judge"].startswith(f"endpoint {dep.served_name} at 127.0.0.1")
        # a running deployment judges through the same endpoint path
        by_dep = runs.wait_for(submit_judge({"judge": f"deployment:{dep.id}", "limit": 1, "max_new_tokens": 4}).id,
                               timeout_s=300)
        assert by_dep.status == "succeeded", by_dep.error
    finally:
        D.stop(dep.id)
    # the key is nowhere the studio writes: the database, the jobs' config, results and logs
    for path in workspace.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    monkeypatch.delenv(ENDPOINT_KEY_ENV)
    assert _api_key(resolve_judge("endpoint")) == NO_KEY  # no key: never this machine's HF token instead
