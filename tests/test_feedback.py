"""Preference data from people (issue 28): Playground votes and an evaluation's corrections become a preference
dataset — majority over disagreeing votes, ties and "both bad" counted out, every row's source kept — through the
importer (a version with splits), on the command line with ``--json`` and exit code 2 for bad input, in the
Playground / Evaluate / Data tabs' handlers, and a 2-step DPO run trains on it."""
from __future__ import annotations

import json

import pytest

from core import runs
from core.data import get_dataset, read_split
from core.data.errors import DatasetError
from core.data.feedback import plan_from_votes, preference_from_votes, select_votes, votes_scope
from core.evaluate import arena, results
from core.evaluate.corrections import corrections_from_evaluation
from storage import Evaluation


def vote(winner, a="Paris.", b="Lyon.", prompt="Capital of France?", model_a="default", model_b="run:1", **kw):
    return arena.record_vote(prompt=prompt, output_a=a, output_b=b, model_a=model_a, model_b=model_b, winner=winner,
                             **kw).id


@pytest.fixture
def votes(workspace):
    """Votes through the real storage layer: one pair with disagreeing votes (3 for 'Paris.', one of them with the
    sides swapped, 1 for 'Lyon.'), a tie, a "both bad", an even split, identical answers, and a chat-mode vote."""
    ids = {"paris": [vote("a"), vote("b", a="Lyon.", b="Paris.", model_a="run:1", model_b="default"),
                     vote("a", system_prompt="")]}
    ids["lyon"] = [vote("b")]
    ids["tie"] = vote("tie", prompt="2+2?", a="4", b="four")
    ids["bad"] = vote("both_bad", prompt="2+2?", a="5", b="22")
    ids["split"] = [vote("a", prompt="Best color?", a="Blue.", b="Red."),
                    vote("a", prompt="Best color?", a="Red.", b="Blue.")]
    ids["same"] = vote("a", prompt="Say hi", a="Hi!", b="Hi!", model_b="run:2")
    ids["chat"] = vote("b", prompt="And Spain?", a="Seville.", b="Madrid.", system_prompt="Be brief.",
                       history={"a": [{"role": "user", "content": "Capital of France?"},
                                      {"role": "assistant", "content": "Lyon."}],
                                "b": [{"role": "user", "content": "Capital of France?"},
                                      {"role": "assistant", "content": "Paris."}]},
                       voter="alice")
    return ids


def test_votes_become_pairs_by_majority_with_ties_and_both_bad_left_out_and_counted(votes):
    plan = plan_from_votes(select_votes())
    assert plan.considered == 10 and len(plan.rows) == 2 and plan.contradictory == 1
    assert plan.left_out == {"tie": 1, "both_bad": 1, "no_majority": 2, "too_few_votes": 0, "same_answer": 1,
                             "empty_answer": 0}
    assert "10 votes → 2 preference pairs (1 with disagreeing votes" in plan.describe()
    assert "1 tie, 1 both bad, 2 on a pair with as many votes for each answer" in plan.describe()

    result = preference_from_votes(tokenizer=None)
    assert result.created and result.rows == 2 and result.left_out["tie"] == 1
    ds = get_dataset(result.dataset_id)
    assert ds.kind == "preference" and ds.rows == 2 and sum(ds.splits.values()) == 2
    rows = {r["prompt"][-1]["content"]: r for r in read_split(ds, "all")}
    paris = rows["Capital of France?"]
    assert paris["chosen"] == [{"role": "assistant", "content": "Paris."}]
    assert paris["rejected"] == [{"role": "assistant", "content": "Lyon."}]
    assert paris["prompt"] == [{"role": "user", "content": "Capital of France?"}]
    assert paris["source"] == {"from": "votes", "vote_ids": votes["paris"] + votes["lyon"], "votes_for": 3,
                               "votes_against": 1, "chosen_model": "default", "rejected_model": "run:1"}
    chat = rows["And Spain?"]  # the system prompt and the chosen side's earlier turns are the prompt
    assert [m["role"] for m in chat["prompt"]] == ["system", "user", "assistant", "user"]
    assert chat["prompt"][2]["content"] == "Paris." and chat["chosen"][0]["content"] == "Madrid."
    assert chat["source"]["vote_ids"] == [votes["chat"]] and chat["source"]["chosen_model"] == "run:1"
    fb = ds.meta["feedback"]
    assert fb["from"] == "votes" and fb["vote_ids"] == sorted(votes["paris"] + votes["lyon"] + [votes["chat"]])
    assert fb["left_out"]["no_majority"] == 2 and fb["contradictory_pairs"] == 1
    # the same votes again: the same version, not a copy
    again = preference_from_votes(tokenizer=None)
    assert again.dataset_id == result.dataset_id and not again.created


def test_vote_filters_model_since_min_votes_and_whose_votes(votes):
    assert plan_from_votes(select_votes(), min_votes=3).left_out["too_few_votes"] == 1 + 2  # chat (1), split (2)
    assert len(plan_from_votes(select_votes(), min_votes=3).rows) == 1
    assert len(select_votes(voter="alice")) == 1 and len(select_votes(model="run:1")) == 9
    assert select_votes(since="2999-01-01") == [] and len(select_votes(since="2000-01-01")) == 10
    with pytest.raises(DatasetError, match=r"no votes match \(model run:9\)"):
        preference_from_votes(model="run:9", tokenizer=None)
    with pytest.raises(DatasetError, match="--since must be a date"):
        select_votes(since="yesterday")
    with pytest.raises(DatasetError, match="none of the 9 votes makes a preference pair.*lower --min-votes"):
        preference_from_votes(model="default", since="2000-01-01", min_votes=5, tokenizer=None, voter="anonymous")
    assert votes_scope("") is None and votes_scope("bob") == "bob"  # a person in a shared studio: their own votes


def test_cli_from_votes_prints_dataset_id_rows_and_left_out_and_says_what_to_do_without_votes(workspace, capsys):
    from core.__main__ import main

    assert main(["data", "from-votes", "--json", "--tokenizer", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no votes yet: in the Playground tick 'Blind A/B'")
    vote("a")
    vote("tie")
    assert main(["data", "from-votes", "--json", "--tokenizer", "none", "--model", "default"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 1 and out["left_out"]["tie"] == 1 and out["dataset_id"] >= 1
    assert main(["data", "from-votes", "--since", "not-a-date"]) == 2
    assert "--since must be a date" in capsys.readouterr().err


def _evaluation(ws, kind="generation") -> int:
    examples = [
        {"i": 0, "prompt": [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Name?"}],
         "reference": '{"name": "Ada"}', "base": '{"name": "Ada"}', "tuned": "Ada",
         "scores": {"base": {"exact_match": 1.0, "rougeL": 1.0}, "tuned": {"exact_match": 0.0, "rougeL": 0.5}}},
        {"i": 1, "prompt": [{"role": "user", "content": "Age?"}], "reference": '{"age": 36}',
         "base": "36", "tuned": '{"age": 37}',
         "scores": {"base": {"exact_match": 0.0, "rougeL": 0.2}, "tuned": {"exact_match": 0.0, "rougeL": 0.8}}},
        {"i": 2, "prompt": [{"role": "user", "content": "City?"}], "reference": '{"city": "London"}',
         "base": "London", "tuned": '{"city": "London"}',
         "scores": {"base": {"exact_match": 0.0, "rougeL": 0.3}, "tuned": {"exact_match": 1.0, "rougeL": 1.0}}},
        {"i": 3, "prompt": [{"role": "user", "content": "Hobby?"}], "reference": None, "base": "math",
         "tuned": "maths", "scores": {"base": {}, "tuned": {}}},
    ]
    path = ws / "examples.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    ev = results.save(Evaluation(kind=kind, name="e", base_label="default", tuned_label="run #1", dataset_ref="3",
                                 split="test", n=len(examples), examples_path=str(path)))
    return ev.id


def test_an_evaluations_rows_become_corrections_reference_or_edit_chosen_model_answer_rejected(workspace, capsys):
    ev_id = _evaluation(workspace)
    worse = corrections_from_evaluation(ev_id, which="tuned worse", tokenizer=None)
    rows = read_split(get_dataset(worse.dataset_id), "all")
    assert worse.rows == 1 and rows == [{
        "prompt": [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Name?"}],
        "chosen": [{"role": "assistant", "content": '{"name": "Ada"}'}],
        "rejected": [{"role": "assistant", "content": "Ada"}],
        "source": {"from": "evaluation", "evaluation_id": ev_id, "example": 0, "chosen": "reference",
                   "rejected": "tuned"}}]
    every = corrections_from_evaluation(ev_id, edits={3: "Mathematics."}, tokenizer=None)
    assert every.rows == 3 and every.left_out["already_right"] == 1 and every.considered == 4
    from core.__main__ import main

    assert main(["data", "from-evaluation", "--evaluation", str(ev_id), "--filter", "both_wrong", "--reject", "base",
                 "--edit", "1=The age is 36.", "--tokenizer", "none", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 1 and out["considered"] == 1
    row = read_split(get_dataset(out["dataset_id"]), "all")[0]
    assert row["chosen"][0]["content"] == "The age is 36." and row["rejected"][0]["content"] == "36"
    assert row["source"]["chosen"] == "edited"
    for argv, says in ((["--rows", "9"], "example 9 is not in evaluation"),
                       (["--filter", "nonsense"], "unknown filter 'nonsense'"),
                       (["--rows", "2"], "none of the 1 example"),
                       (["--rows", "1", "--edit", "2=x"], "has an edited answer but is not among the picked rows")):
        assert main(["data", "from-evaluation", "--evaluation", str(ev_id), "--tokenizer", "none", *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    mc = _evaluation(workspace, kind="multiple_choice")
    assert main(["data", "from-evaluation", "--evaluation", str(mc)]) == 2
    assert "no written answers to correct" in capsys.readouterr().err
    assert main(["data", "from-evaluation", "--evaluation", "999"]) == 2
    assert "evaluation 999 not found" in capsys.readouterr().err


def test_the_tabs_make_the_data_show_its_source_and_a_dpo_run_trains_on_it(workspace, votes, tiny_model_dir):
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training
    from ui import data as data_tab
    from ui import evaluate as eval_tab
    from ui import playground

    assert "10 votes → 2 preference pairs" in playground.votes_plan_text(None)
    text = playground.make_preference_data(None)
    ds_id = int(text.split("dataset ")[1].split(" ")[0])
    assert "Ready for the DPO / ORPO objective in the Train tab" in text
    head, _hist, _stats = data_tab.show_dataset(str(ds_id))
    assert "made from 10 Playground votes" in head and "1 tie" in head
    _segments, info = data_tab.show_row(str(ds_id), "train", 0, "default", 512)
    assert "from Playground votes #" in info

    ev_id = _evaluation(workspace)
    said = eval_tab.make_corrections(str(ev_id), "tuned worse", "", "", None)
    assert "1 preference pair from 1 example" in said and "Ready for the DPO / ORPO objective" in said
    said = eval_tab.make_corrections(str(ev_id), "all", "1", "The age is 36.", None)
    fixed = read_split(get_dataset(int(said.split("dataset ")[1].split(" ")[0])), "all")
    assert fixed[0]["chosen"][0]["content"] == "The age is 36." and fixed[0]["source"]["chosen"] == "edited"
    assert "An edited answer is for one example" in eval_tab.make_corrections(str(ev_id), "all", "", "x", None)
    assert "pick rows whose model answer differs" in eval_tab.make_corrections(str(ev_id), "all", "2", "", None)
    runs_before = len(runs.list_runs(kind="train"))
    run = submit_training(TrainConfig(dataset=str(ds_id), objective="dpo", base_model=tiny_model_dir, max_steps=2,
                                      batch_size=1, max_length=64, lora_r=4, lora_alpha=8, save_steps=0,
                                      logging_steps=1))
    final = runs.wait_for(run.id, timeout_s=300, poll_s=0.3)
    assert final.status == "succeeded", runs.log_tail(final.id)
    assert final.step == 2 and len(runs.list_runs(kind="train")) == runs_before + 1
    margins = [m.extra["rewards/margins"] for m in runs.run_metrics(run.id) if m.extra and "rewards/margins" in m.extra]
    assert len(margins) == 2  # trained as DPO pairs, one reward margin a step
