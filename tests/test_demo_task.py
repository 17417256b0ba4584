"""The built-in demo task: deterministic generation, valid answers, variety, and tolerant scoring (no model)."""
from __future__ import annotations

import json

import pytest

from core.data.demo import (
    DEMO_SYSTEM_PROMPT,
    FIELDS,
    INTENTS,
    PRODUCTS,
    SENTIMENTS,
    URGENCIES,
    demo_prompts,
    demo_references,
    extract_json_object,
    generate_demo_rows,
    score_prediction,
    score_predictions,
    write_demo_dataset,
)

REF = '{"intent":"refund","order_id":"A1234","product":"air fryer","urgency":"high","sentiment":"negative"}'


@pytest.fixture(scope="module")
def rows():
    return generate_demo_rows(300, seed=0)


def _answer(row) -> dict:
    return json.loads(row["messages"][2]["content"])


# ---- generation ---------------------------------------------------------------------------------------------------

def test_same_n_and_seed_give_identical_rows():
    assert generate_demo_rows(50, seed=3) == generate_demo_rows(50, seed=3)
    assert generate_demo_rows(0) == []


def test_prefix_stable_in_n():
    assert generate_demo_rows(20, seed=5) == generate_demo_rows(40, seed=5)[:20]


def test_different_seeds_give_disjoint_messages():
    a = {r["messages"][1]["content"] for r in generate_demo_rows(300, seed=0)}
    b = {r["messages"][1]["content"] for r in generate_demo_rows(300, seed=1)}
    assert len(a & b) <= 3  # "disjoint-ish": a held-out split made with another seed barely overlaps


def test_negative_n_is_refused():
    with pytest.raises(ValueError, match="n must be"):
        generate_demo_rows(-1)


def test_row_shape_and_system_prompt(rows):
    for row in rows:
        msgs = row["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
        assert msgs[0]["content"] == DEMO_SYSTEM_PROMPT
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in msgs)


def test_every_answer_matches_the_schema(rows):
    for i, row in enumerate(rows):
        text = row["messages"][2]["content"]
        ans = json.loads(text)
        assert list(ans) == list(FIELDS), f"row {i}: keys {list(ans)}"
        assert ans["intent"] in INTENTS
        assert ans["urgency"] in URGENCIES
        assert ans["sentiment"] in SENTIMENTS
        assert ans["order_id"] is None or (
            isinstance(ans["order_id"], str) and ans["order_id"][0].isalpha() and ans["order_id"][1:].isdigit()
        )
        assert ans["product"] is None or ans["product"] in PRODUCTS
        if ans["intent"] == "technical" and ans["product"]:
            assert ans["product"] not in ("duvet set", "yoga mat", "tent"), "technical faults are about devices"
        assert text == json.dumps(ans, separators=(",", ":")), "answers are compact JSON"
        assert len(text) <= 160  # ~30-40 tokens: well under 60


def test_answers_are_grounded_in_the_message(rows):
    for i, row in enumerate(rows):
        user, ans = row["messages"][1]["content"], _answer(row)
        if ans["order_id"]:
            assert ans["order_id"] in user, f"row {i}: order id not in the message"
        if ans["product"]:
            assert ans["product"] in user.lower(), f"row {i}: product not in the message"
        else:
            assert not any(p in user.lower() for p in PRODUCTS if len(p) > 6), f"row {i}: unlabelled product mention"


def test_user_messages_are_20_to_80_words(rows):
    counts = [len(r["messages"][1]["content"].split()) for r in rows]
    assert min(counts) >= 20 and max(counts) <= 80


def test_variety(rows):
    users = [r["messages"][1]["content"] for r in rows]
    assert len(set(users)) == len(users), "messages are distinct"
    answers = [_answer(r) for r in rows]
    assert {a["intent"] for a in answers} == set(INTENTS)
    assert {a["urgency"] for a in answers} == set(URGENCIES)
    assert {a["sentiment"] for a in answers} == set(SENTIMENTS)
    with_id = sum(a["order_id"] is not None for a in answers)
    with_product = sum(a["product"] is not None for a in answers)
    assert 0.25 * len(rows) < with_id < 0.85 * len(rows), "both present and null order ids"
    assert 0.25 * len(rows) < with_product < 0.85 * len(rows), "both present and null products"
    assert len({a["product"] for a in answers}) > 20
    assert len({u.split()[0] for u in users}) > 10, "openings vary"
    assert any(u.islower() for u in users), "some messages are all lowercase"
    assert any("\n" in u for u in users) and any("\n" not in u for u in users)


def test_prompts_and_references(rows):
    prompts, refs = demo_prompts(rows[:5]), demo_references(rows[:5])
    assert all([m["role"] for m in p] == ["system", "user"] for p in prompts)
    assert refs == [r["messages"][2]["content"] for r in rows[:5]]


def test_write_demo_dataset(tmp_path):
    path = write_demo_dataset(tmp_path / "sub" / "demo.jsonl", n=12, seed=4)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == generate_demo_rows(12, seed=4)


# ---- scoring -----------------------------------------------------------------------------------------------------

def test_exact_answer_scores_full_marks():
    s = score_prediction(REF, REF)
    assert s["valid_json"] and s["exact_match"] and s["field_accuracy"] == 1.0
    assert s["fields"] == dict.fromkeys(FIELDS, True)


def test_fenced_spaced_and_reordered_answer_is_accepted():
    pred = (
        "Sure! Here is the JSON:\n```json\n{\n  \"sentiment\": \"Negative\",\n  \"urgency\": \"high\",\n"
        "  \"intent\": \"refund\", \"order_id\": \"#a1234\", \"product\": \" Air Fryer \"\n}\n```\nHope it helps."
    )
    s = score_prediction(pred, REF)
    assert s["valid_json"] and s["exact_match"]


def test_first_object_is_taken():
    pred = REF + ' {"intent":"billing"}'
    assert score_prediction(pred, REF)["exact_match"]
    assert extract_json_object('noise { not json } then {"a": 1} and {"b": 2}') == {"a": 1}


def test_partly_wrong_answer():
    pred = '{"intent":"billing","order_id":"A1234","product":null,"urgency":"high","sentiment":"neutral"}'
    s = score_prediction(pred, REF)
    assert s["valid_json"] and not s["exact_match"]
    assert s["fields"] == {"intent": False, "order_id": True, "product": False, "urgency": True, "sentiment": False}
    assert s["field_accuracy"] == pytest.approx(2 / 5)


def test_null_spellings_and_missing_keys():
    ref = '{"intent":"account","order_id":null,"product":null,"urgency":"low","sentiment":"neutral"}'
    assert score_prediction('{"intent":"account","order_id":"null","urgency":"low","sentiment":"neutral"}',
                            ref)["exact_match"]
    assert score_prediction('{"intent":"account","order_id":"None","product":"","urgency":"low","sentiment":"neutral"}',
                            ref)["exact_match"]
    assert not score_prediction('{"intent":"account","order_id":"A1","product":null,'
                                '"urgency":"low","sentiment":"neutral"}', ref)["exact_match"]


@pytest.mark.parametrize("pred", ["", "I'm sorry, I can't help with that.", '{"intent": "refund", ', "[1, 2]",
                                  "```json\n```"])
def test_invalid_answers_score_zero(pred):
    s = score_prediction(pred, REF)
    assert s == {"valid_json": False, "fields": dict.fromkeys(FIELDS, False), "field_accuracy": 0.0,
                 "exact_match": False}


def test_reference_must_be_json():
    with pytest.raises(ValueError, match="reference"):
        score_prediction(REF, "not json")


def test_aggregate_scores():
    half = '{"intent":"refund","order_id":"A1234","product":"air fryer","urgency":"low","sentiment":"positive"}'
    agg = score_predictions([REF, half, "no idea", "```json\n" + REF + "\n```"], [REF] * 4)
    assert agg["n"] == 4
    assert agg["json_valid_rate"] == pytest.approx(3 / 4)
    assert agg["exact_match_rate"] == pytest.approx(2 / 4)
    assert agg["per_field"]["intent"] == pytest.approx(3 / 4)
    assert agg["per_field"]["urgency"] == pytest.approx(2 / 4)
    assert agg["field_accuracy"] == pytest.approx((3 + 3 + 3 + 2 + 2) / 20)


def test_aggregate_edge_cases():
    assert score_predictions([], [])["n"] == 0
    with pytest.raises(ValueError, match="predictions"):
        score_predictions(["x"], [])


def test_references_score_perfectly_against_themselves(rows):
    refs = demo_references(rows)
    agg = score_predictions(refs, refs)
    assert agg["json_valid_rate"] == agg["field_accuracy"] == agg["exact_match_rate"] == 1.0
