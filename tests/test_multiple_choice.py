"""Multiple-choice scoring (core.evaluate.multiple_choice) on the embedded model: prompts, tokens, log-likelihoods
checked against a one-sequence-at-a-time computation, against the real lm-evaluation-harness, and with PEFT adapters
mixed in one batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from core.data import prepare_dataset
from core.evaluate.multiple_choice import (
    PROMPT_STYLES,
    MultipleChoiceError,
    build_request,
    encode_pair,
    model_max_length,
    score_rows,
    summarise,
)


def fixture_rows(fixtures_dir, name: str) -> list[dict]:
    return [pr.row for pr in prepare_dataset(fixtures_dir / name).rows]


def load_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def model(default_model_dir):
    return load_model(default_model_dir)


# ------------------------------------------------------------------------------------------------------ prompts
def test_styles_render_like_the_harness_templates():
    row = {"question": " Which is a fruit? ", "choices": ["apple", "chair", "cloud", "rock"], "answer": 0}
    assert PROMPT_STYLES == ("arc", "mmlu", "native")
    # arc_easy.yaml: doc_to_text "Question: {{question}}\nAnswer:", choices = texts, target_delimiter " "
    assert build_request(row, "arc") == ("Question:  Which is a fruit? \nAnswer:",
                                         [" apple", " chair", " cloud", " rock"], 0)
    # mmlu: "{{question.strip()}}\nA. {{choices[0]}}\n...\nAnswer:", choices A-D
    assert build_request(row, "mmlu") == (
        "Which is a fruit?\nA. apple\nB. chair\nC. cloud\nD. rock\nAnswer:", [" A", " B", " C", " D"], 0)
    with_context = {**row, "context": "  Apples grow on trees.\n", "choices": ["apple", "chair", "cloud", "rock",
                                                                             "sand"], "answer": 4}
    ctx, conts, gold = build_request(with_context, "arc")  # like the harness's SciQ: "{{support.lstrip()}}\n..."
    assert ctx == "Apples grow on trees.\n\nQuestion:  Which is a fruit? \nAnswer:" and gold == 4
    ctx, conts, gold = build_request(with_context, "mmlu")
    assert ctx == "Apples grow on trees.\nWhich is a fruit?\nA. apple\nB. chair\nC. cloud\nD. rock\nE. sand\nAnswer:"
    assert conts == [" A", " B", " C", " D", " E"] and gold == 4
    # any layout the Data tab reads is accepted (here an MMLU CSV row)
    assert build_request({"question": "2+2?", "A": "3", "B": "4", "answer": "B"}, "mmlu") == (
        "2+2?\nA. 3\nB. 4\nAnswer:", [" A", " B"], 1)


def test_bad_rows_and_styles_are_refused():
    with pytest.raises(MultipleChoiceError, match="unknown prompt style 'helm'; choose one of arc, mmlu"):
        build_request({"question": "q", "choices": ["a", "b"], "answer": 0}, "helm")
    with pytest.raises(MultipleChoiceError, match="'answer' is 'E' but there are only 4 choices"):
        build_request({"question": "q", "choices": ["a", "b", "c", "d"], "answer": "E"}, "arc")
    with pytest.raises(MultipleChoiceError, match="'choices' needs at least 2 options"):
        build_request({"question": "q", "choices": ["a"], "answer": 0}, "mmlu")


def test_encode_pair_moves_trailing_space_to_the_continuation(tokenizer):
    assert encode_pair(tokenizer, "Answer: ", "Paris") == encode_pair(tokenizer, "Answer:", " Paris")
    ctx, cont = encode_pair(tokenizer, "Question: capital of France?\nAnswer:", " Paris")
    assert ctx == tokenizer.encode("Question: capital of France?\nAnswer:")  # SmolLM2 adds no BOS
    assert ctx + cont == tokenizer.encode("Question: capital of France?\nAnswer: Paris")
    ctx, cont = encode_pair(tokenizer, "", " Paris")  # an empty context is the prefix token (BOS)
    assert ctx == [tokenizer.bos_token_id] and cont == tokenizer.encode(" Paris", add_special_tokens=False)


def test_summarise_matches_the_harness_formulas():
    rows = [{"correct": c, "correct_norm": n} for c, n in [(1, 1), (0, 1), (1, 0), (1, 1)]]
    s = summarise(rows)
    assert (s["acc"], s["acc_norm"], s["n"]) == (0.75, 0.75, 4)
    assert s["acc_stderr"] == pytest.approx((0.75 * 0.25 * 4 / 3) ** 0.5 / 2)  # sample stddev / sqrt(n)
    assert summarise(rows[:1])["acc_stderr"] is None
    with pytest.raises(MultipleChoiceError, match="no scored rows"):
        summarise([])


# ------------------------------------------------------------------------------------------------ log-likelihood
def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """One sequence, no padding: log-softmax over every position of context + continuation, summed over the
    continuation's tokens (SmolLM2's tokenizer adds no special tokens, so plain encodes are the harness's)."""
    ctx = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    assert whole[:len(ctx)] == ctx
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole]), use_cache=False).logits[0]
    lp = torch.log_softmax(logits.float(), dim=-1)
    return float(sum(lp[len(ctx) - 1 + k, tok] for k, tok in enumerate(whole[len(ctx):])))


def test_batched_scores_equal_one_sequence_at_a_time(model, tokenizer, fixtures_dir):
    arc_rows = fixture_rows(fixtures_dir, "mc_arc_style.jsonl")[:3]
    arc_rows.append({"context": "Lemons are sour and yellow.", "question": "Which fruit is sour?",
                     "choices": ["lemon", "banana", "a very sweet ripe mango"], "answer": 0})
    for style, rows in (("arc", arc_rows), ("mmlu", fixture_rows(fixtures_dir, "mc_mmlu_style.csv")[:3])):
        batched = score_rows(model, tokenizer, rows, style, batch_size=5)["model"]
        unbatched = score_rows(model, tokenizer, rows, style, batch_size=1)["model"]
        for row, b, u in zip(rows, batched, unbatched):
            ctx, conts, gold = build_request(row, style)
            direct = [direct_loglikelihood(model, tokenizer, ctx, c) for c in conts]
            assert b["lls"] == pytest.approx(direct, abs=1e-4) and u["lls"] == pytest.approx(direct, abs=1e-4)
            assert b["gold"] == gold and b["pred"] == max(range(len(direct)), key=lambda i: direct[i])
            choices = row["choices"] if style == "arc" else list("ABCD"[:len(row["choices"])])
            assert b["lengths"] == [len(c) for c in choices]
            norm = [ll / n for ll, n in zip(direct, b["lengths"])]
            assert b["pred_norm"] == max(range(len(norm)), key=lambda i: norm[i])
            assert (b["correct"], b["correct_norm"]) == (b["pred"] == gold, b["pred_norm"] == gold)
    assert model_max_length(model, tokenizer) == 8192  # SmolLM2's max_position_embeddings, as the harness reads


def test_bad_input_names_the_row(model, tokenizer):
    rows = [{"question": "q1", "choices": ["a", "b"], "answer": 0},
            {"question": "q2", "choices": ["a", "b", "c", "d"], "answer": 1},
            {"question": "q3", "choices": ["a", "b", "c", "d"], "answer": "E"}]
    with pytest.raises(MultipleChoiceError, match=r"^row 3 of 3: 'answer' is 'E' but there are only 4 choices"):
        score_rows(model, tokenizer, rows, "arc")
    with pytest.raises(MultipleChoiceError, match="row 1 of 1: 'choices' is missing"):
        score_rows(model, tokenizer, [{"question": "q", "answer": 0}], "mmlu")
    with pytest.raises(MultipleChoiceError, match="unknown prompt style 'MMLU'"):
        score_rows(model, tokenizer, rows[:1], "MMLU")
    with pytest.raises(MultipleChoiceError, match="adapter_names needs a peft.PeftModel"):
        score_rows(model, tokenizer, rows[:1], "arc", adapter_names=["__base__"])
    with pytest.raises(MultipleChoiceError, match="batch_size must be a positive integer"):
        score_rows(model, tokenizer, rows[:1], "arc", batch_size=0)


# ---------------------------------------------------------------------------------------------------- adapters
def test_base_and_adapter_in_one_mixed_batch(default_model_dir, tokenizer, fixtures_dir):
    from peft import LoraConfig, get_peft_model

    rows = fixture_rows(fixtures_dir, "mc_arc_style.jsonl")[:4]
    bare = score_rows(load_model(default_model_dir), tokenizer, rows, "arc", batch_size=8)["model"]

    peft_model = get_peft_model(load_model(default_model_dir),
                                LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
                                adapter_name="tuned")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): give B values so "tuned" differs from the base
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    alone = score_rows(peft_model, tokenizer, rows, "arc", batch_size=8)["model"]  # the active adapter, by itself
    mixed = score_rows(peft_model, tokenizer, rows, "arc", adapter_names=["__base__", "tuned"], batch_size=8)

    assert set(mixed) == {"__base__", "tuned"}
    biggest_change = 0.0
    for b, t, ref_b, ref_t in zip(mixed["__base__"], mixed["tuned"], bare, alone):
        assert b["lls"] == pytest.approx(ref_b["lls"], abs=1e-4) and b["pred"] == ref_b["pred"]
        assert t["lls"] == pytest.approx(ref_t["lls"], abs=1e-4) and t["pred"] == ref_t["pred"]
        biggest_change = max(biggest_change, *(abs(x - y) for x, y in zip(b["lls"], t["lls"])))
    assert biggest_change > 0.05  # the adapter really changes the scores
    with pytest.raises(MultipleChoiceError, match="unknown adapter 'other'; the model has tuned"):
        score_rows(peft_model, tokenizer, rows, "arc", adapter_names=["__base__", "other"])


# ------------------------------------------------------------------------------------------- against lm-eval
def test_encode_pair_equals_the_harness(tokenizer, default_model_dir):
    """The harness's own HFLM._encode_pair on the same tokenizer — and on one that adds a BOS token."""
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM
    from tokenizers.processors import TemplateProcessing

    from core.models import load_tokenizer

    with_bos = load_tokenizer(str(default_model_dir))
    with_bos.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{with_bos.bos_token} $A", pair=f"{with_bos.bos_token} $A $B",
        special_tokens=[(with_bos.bos_token, with_bos.bos_token_id)])
    assert with_bos.encode("hi")[0] == with_bos.bos_token_id
    pairs = [("Question: What is 2+2?\nAnswer:", " 4"), ("Answer: ", "Paris"), ("x \n ", " y z"),
             (f"{tokenizer.bos_token}Q:", " A"), ("Q", "ü")]
    for tok in (tokenizer, with_bos):
        harness = HFLM.__new__(HFLM)  # only what _encode_pair / tok_encode read, no model
        harness.tokenizer, harness.add_bos_token, harness.custom_prefix_token_id = tok, None, None
        harness.backend = "causal"
        for context, continuation in pairs:
            assert encode_pair(tok, context, continuation) == harness._encode_pair(context, continuation)


LM_EVAL_RUNNER = r"""
import json, sys
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

spec = json.loads(sys.argv[1])
manager = TaskManager(include_path=spec["include_path"], include_defaults=False)
res = simple_evaluate(model="hf", model_args=spec["model_args"], tasks=spec["tasks"], device="cpu",
                      batch_size=spec["batch_size"], log_samples=True, task_manager=manager)
out = {}
for name in spec["tasks"]:
    r = res["results"][name]
    samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
    out[name] = {key: r[f"{key},none"] for key in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}
    out[name]["n"] = len(samples)
    out[name]["lls"] = [[float(resp[0]) for resp in s["filtered_resps"]] for s in samples]
print("LM_EVAL_RESULT " + json.dumps(out))
"""


def harness_task(name: str, loader: str, data_file, doc_to_text: str, doc_to_choice, doc_to_target: str) -> dict:
    metrics = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]
    return {"task": name, "dataset_path": loader, "dataset_kwargs": {"data_files": {"test": str(data_file)}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": doc_to_text,
            "doc_to_choice": doc_to_choice, "doc_to_target": doc_to_target, "metric_list": metrics}


@pytest.mark.slow
def test_accuracy_agrees_with_lm_eval(model, tokenizer, default_model_dir, fixtures_dir, tmp_path):
    """The harness (a subprocess, offline) and score_rows on the same files, model and prompts: the same accuracies,
    the same per-choice log-likelihoods."""
    pytest.importorskip("lm_eval")
    tasks = {
        # the harness's arc_easy template over the ARC-style fixture (question / choices / answer index)
        "fts_mc_arc": ("arc", "mc_arc_style.jsonl", harness_task(
            "fts_mc_arc", "json", fixtures_dir / "mc_arc_style.jsonl", "Question: {{question}}\nAnswer:",
            "choices", "answer")),
        # the harness's MMLU template over the MMLU CSV fixture (question, A-D, answer letter)
        "fts_mc_mmlu": ("mmlu", "mc_mmlu_style.csv", harness_task(
            "fts_mc_mmlu", "csv", fixtures_dir / "mc_mmlu_style.csv",
            "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:", ["A", "B", "C", "D"],
            "answer")),
    }
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    for name, (_style, _file, config) in tasks.items():
        (task_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    spec = {"include_path": str(task_dir), "tasks": list(tasks), "batch_size": 8,
            "model_args": f"pretrained={default_model_dir},dtype=float32"}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", LM_EVAL_RUNNER, json.dumps(spec)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LM_EVAL_RESULT ")), None)
    assert proc.returncode == 0 and line, f"lm-eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    harness = json.loads(line.split(" ", 1)[1])

    for name, (style, file, _config) in tasks.items():
        ours_rows = score_rows(model, tokenizer, fixture_rows(fixtures_dir, file), style, batch_size=8)["model"]
        ours, theirs = summarise(ours_rows), harness[name]
        print(f"{name} ({style}, {ours['n']} questions): ours acc {ours['acc']:.4f} acc_norm {ours['acc_norm']:.4f}"
              f" | lm-eval acc {theirs['acc']:.4f} acc_norm {theirs['acc_norm']:.4f}")
        assert ours["n"] == theirs["n"]
        assert round(ours["acc"] * ours["n"]) == round(theirs["acc"] * theirs["n"])
        assert round(ours["acc_norm"] * ours["n"]) == round(theirs["acc_norm"] * theirs["n"])
        assert ours["acc"] == pytest.approx(theirs["acc"], abs=1e-12)
        assert ours["acc_norm"] == pytest.approx(theirs["acc_norm"], abs=1e-12)
        assert ours["acc_stderr"] == pytest.approx(theirs["acc_stderr"], abs=1e-9)
        assert ours["acc_norm_stderr"] == pytest.approx(theirs["acc_norm_stderr"], abs=1e-9)
        for row, their_lls in zip(ours_rows, theirs["lls"]):
            assert row["lls"] == pytest.approx(their_lls, abs=1e-4)


# ------------------------------------------------------------------------------------ the native formulations
HELLASWAG_DOCS = [
    {"activity_label": "Personal Care and Style", "ctx_a": "[header] How to tie a tie [title] Pick a tie.",
     "ctx_b": "then YOU cross", "ctx": "x", "endings": ["[substeps] the wide  end over.", "Eat it [step] now.",
                                                        " N/A ", "Café ☕"], "label": "2"},
    {"activity_label": "Snowboarding", "ctx_a": "A man stands on a hill.", "ctx_b": "",
     "ctx": "A man stands on a hill.", "endings": ["He rides down.", "He eats 東京 sushi."], "label": "1"},
]
TRUTHFULQA_DOC = {"question": "Which ocean is the largest?  ",
                  "mc1_targets": {"choices": ["The Pacific.", "The Atlantic."], "labels": [1, 0]},
                  "mc2_targets": {"choices": ["The Pacific.", "Pacific.", "The Atlantic."], "labels": [1, 1, 0]}}


def test_native_prompts_are_the_harness_own(tmp_path):
    """HellaSwag through the harness's own process_docs, TruthfulQA and MMLU through its own templates (its jinja)."""
    import datasets
    from lm_eval import utils as lm_utils
    from lm_eval.tasks.hellaswag.utils import process_docs

    from core.evaluate.multiple_choice import TRUTHFULQA_PRIMER, build_requests

    for doc, theirs in zip(HELLASWAG_DOCS, process_docs(datasets.Dataset.from_list(HELLASWAG_DOCS))):
        assert build_request(doc, "native") == (theirs["query"], [f" {c}" for c in theirs["choices"]],
                                                theirs["gold"])
    tasks = Path(__import__("lm_eval").__file__).parent / "tasks"
    tqa = yaml.safe_load((tasks / "truthfulqa" / "truthfulqa_mc1.yaml").read_text())
    ctx, conts, gold = build_request(TRUTHFULQA_DOC, "native")
    assert ctx == lm_utils.apply_template(tqa["doc_to_text"], TRUTHFULQA_DOC) and ctx.startswith(TRUTHFULQA_PRIMER)
    assert (conts, gold) == ([" The Pacific.", " The Atlantic."], 0)
    form, (req,) = build_requests([TRUTHFULQA_DOC], "native")
    assert form.task == "truthfulqa" and req.continuations[2:] == [" The Pacific.", " Pacific.", " The Atlantic."]
    mmlu = yaml.safe_load((tasks / "mmlu" / "default" / "_default_template_yaml").read_text())
    doc = {"question": " 2+2?", "subject": "high_school_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1}
    ctx, conts, gold = build_request(doc, "native")
    assert ctx == ("The following are multiple choice questions (with answers) about high school mathematics.\n\n"
                   + lm_utils.apply_template(mmlu["doc_to_text"], doc))
    assert (conts, gold) == ([" A", " B", " C", " D"], 1)
    assert build_request(doc, "mmlu")[0] == lm_utils.apply_template(mmlu["doc_to_text"], doc)  # no subject line
    arc = {"question": "Which?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}
    assert build_request(arc, "native") == ("Question: Which?\nAnswer:", [" a", " b"], 1)
    obqa = {"question_stem": "The sun is a", "choices": {"text": ["star", "moon"], "label": ["A", "B"]},
            "answerKey": "A"}
    assert build_request(obqa, "native") == ("The sun is a", [" star", " moon"], 0)
    # a named task wins over the layout; the generic layout is MMLU's
    assert build_request(doc, "native", task="arc")[0] == "Question:  2+2?\nAnswer:"
    assert build_request({"question": "q", "choices": ["a", "b"], "answer": 0}, "native")[0] == "q\nA. a\nB. b\nAnswer:"


def test_fewshot_draws_are_the_harness_samplers():
    """The harness's own samplers on the same rows: the same examples for every question, in order (its random
    sampler with seed 1234, each question left out; its first_n)."""
    from lm_eval.api.samplers import ContextSampler, FirstNSampler

    from core.evaluate.multiple_choice import Formulation, fewshot_draws

    rows = [{"question": f"q{i}", "choices": ["a", "b"], "answer": i % 2} for i in range(9)]
    rows += [dict(rows[0]), dict(rows[0]), dict(rows[0])]  # copies of a question: the harness's draw-again path
    for k in (1, 2, 5):
        form = Formulation("native", "hellaswag", num_fewshot=k)
        sampler = ContextSampler(rows, rnd=1234)
        theirs = [sampler.sample(k, eval_doc=r) for r in rows]
        assert [[rows[i] for i in idx] for idx in fewshot_draws(rows, rows, form, exclude_self=True)] == theirs
        sampler = ContextSampler(rows, rnd=1234)
        theirs = [sampler.sample(k) for r in rows]
        assert [[rows[i] for i in idx] for idx in fewshot_draws(rows, rows, form, exclude_self=False)] == theirs
        form = Formulation("native", "mmlu", num_fewshot=k)
        theirs = [FirstNSampler(rows).sample(k, eval_doc=r) for r in rows]
        assert [[rows[i] for i in idx] for idx in fewshot_draws(rows, rows, form, exclude_self=True)] == theirs
    # the draw that would not fit is refused with the row and why
    with pytest.raises(MultipleChoiceError, match="row 1 of 3: 3-shot draws from 3 few-shot rows; it needs at least 4"):
        score_rows(None, None, rows[:3], "arc", num_fewshot=3)
    with pytest.raises(MultipleChoiceError, match="row 1 of 3: 3-shot needs 3 examples to take; the few-shot rows have "
                                                  "2 besides this question"):
        score_rows(None, None, rows[:3], "mmlu", num_fewshot=3)


def test_fewshot_context_and_mc2_are_the_harness(tmp_path):
    from lm_eval.tasks.truthfulqa.utils import process_results_mc2

    from core.evaluate.multiple_choice import build_requests, mc2_score

    rows = [{"question": f"Q{i}?", "choices": ["yes", "no"], "answer": i % 2, "subject": "college_physics"}
            for i in range(4)]
    form, reqs = build_requests(rows, "native", num_fewshot=2)
    assert form.sampler == "first_n" and "2-shot" in form.describe()
    head = "The following are multiple choice questions (with answers) about college physics.\n\n"
    assert reqs[0].context == (head + "Q1?\nA. yes\nB. no\nAnswer: B\n\nQ2?\nA. yes\nB. no\nAnswer: A\n\n"
                               "Q0?\nA. yes\nB. no\nAnswer:")
    form, reqs = build_requests(rows, "arc", num_fewshot=1, fewshot_rows=rows[:1], exclude_self=False)
    assert reqs[3].context == "Question: Q0?\nAnswer: yes\n\nQuestion: Q3?\nAnswer:"
    for lls, labels in (([-3.2, -1.1, -7.5, -2.0], [1, 0, 0, 1]), ([-0.5, -900.0], [0, 1]), ([-40.0] * 3, [1, 1, 0])):
        theirs = process_results_mc2({"mc2_targets": {"labels": labels}}, [(ll, False) for ll in lls])["acc"]
        assert mc2_score(lls, labels) == pytest.approx(theirs, rel=1e-12, abs=1e-300)


def test_native_refusals_say_why():
    from core.evaluate.multiple_choice import formulation

    with pytest.raises(MultipleChoiceError, match="row 1 of 1: lm-evaluation-harness's hellaswag prompt is built "
                                                  "from 'activity_label', 'ctx_a' and 'ctx_b'; the row has no "
                                                  "'activity_label'"):
        score_rows(None, None, [{"ctx": "A man", "endings": ["runs.", "flies."], "label": 0}], "native")
    with pytest.raises(MultipleChoiceError, match="fixed 6-shot Q/A primer"):
        score_rows(None, None, [TRUTHFULQA_DOC], "native", num_fewshot=1)
    with pytest.raises(MultipleChoiceError, match="row 1 of 1: the row has a passage"):
        build_request({**TRUTHFULQA_DOC, "context": "Oceans are big."}, "native")
    with pytest.raises(MultipleChoiceError, match="a task \\(hellaswag\\) is named with the native style only"):
        formulation("arc", task="hellaswag")
    with pytest.raises(MultipleChoiceError, match="unknown task 'piqa'"):
        formulation("native", task="piqa")


def test_any_number_of_choices_and_mc2_only_rows():
    from core.evaluate import results
    from core.evaluate.multiple_choice import choice_label

    assert [choice_label(i) for i in (0, 9, 25, 26, 27, 51, 701, 702)] == ["A", "J", "Z", "AA", "AB", "AZ", "ZZ",
                                                                           "AAA"]
    many = {"question": "Pick one", "choices": [f"option {i}" for i in range(30)], "answer": 27}
    ctx, conts, gold = build_request(many, "mmlu")
    assert conts[-1] == " AD" and "\nAB. option 27\n" in ctx and gold == 27
    record = {"i": 3, "question": "Pick one", "choices": many["choices"], "gold": 27,
              "pred": {"base": 29, "tuned": 27}, "scores": {"base": {"correct": 0.0}, "tuned": {"correct": 1.0}}}
    row = results.flat_row(record)
    assert (row["reference"], row["base"], row["tuned"]) == ("AB", "AD", "AB") and "\nAD. option 29" in row["prompt"]
    # an MC2-only question counts for mc2, not for acc
    per_row = [{"gold": None, "correct": None, "correct_norm": None, "mc2": 0.25},
               {"gold": 1, "correct": True, "correct_norm": False, "mc2": 0.75}]
    s = summarise(per_row)
    assert (s["n"], s["acc"], s["acc_n"], s["mc2"]) == (2, 1.0, 1, 0.5) and s["acc_stderr"] is None
    assert summarise(per_row[:1]) == {"n": 1, "mc2": 0.25, "mc2_stderr": None}


def test_a_benchmark_dataset_is_scored_whole_and_checked_at_submit(workspace, fixtures_dir):
    """Issue 31: no split and no sample asked for: every row (split all, no limit), in multiple-choice mode whatever
    mode was picked; rows or settings the formulation cannot take are refused before anything is queued."""
    from core.data import import_dataset, import_records
    from core.evaluate.config import EvalConfig, EvalConfigError
    from core.evaluate.submit import validate
    from core.runs import JobError

    ds = import_dataset(fixtures_dir / "mc_arc_style.jsonl", model=None)  # the default 90/10 split
    cfg = validate(EvalConfig(tuned="default", dataset=str(ds.dataset_id)))  # the tab's defaults: generation mode
    assert (cfg.mode, cfg.resolved_split(), cfg.limit) == ("multiple_choice", "all", None)
    assert EvalConfig(tuned="default", dataset="1", mode="multiple_choice", limit=5).limit == 5
    assert EvalConfig(tuned="default", dataset="1").limit == 200  # generation keeps its sample
    assert EvalConfig(run_id=1).resolved_split() == "test"  # a run's own rows: held-out ones
    with pytest.raises(JobError, match=f"dataset {ds.dataset_id} has no test rows"):
        validate(EvalConfig(tuned="default", dataset=str(ds.dataset_id), split="test"))
    with pytest.raises(JobError, match="lm-evaluation-harness's hellaswag prompt is built from"):
        validate(EvalConfig(tuned="default", dataset=str(ds.dataset_id), mc_style="native", mc_task="hellaswag"))
    with pytest.raises(JobError, match="row 1 of 24: 30-shot draws from 24 few-shot rows"):
        validate(EvalConfig(tuned="default", dataset=str(ds.dataset_id), mode="multiple_choice", num_fewshot=30))
    with pytest.raises(EvalConfigError, match="fixed 6-shot Q/A primer"):
        EvalConfig.from_dict({"tuned": "default", "dataset": "1", "mc_style": "native", "mc_task": "truthfulqa",
                              "num_fewshot": 5})
    with pytest.raises(EvalConfigError, match="mc_task \\(hellaswag\\) goes with mc_style native"):
        EvalConfig.from_dict({"tuned": "default", "dataset": "1", "mc_task": "hellaswag"})
    with pytest.raises(EvalConfigError, match="split must be test, validation, train or all"):
        EvalConfig.from_dict({"tuned": "default", "dataset": "1", "split": "dev"})
    mixed = import_records([{"question": "Largest ocean?", "choices": ["Pacific", "Pacific ", "Arctic"],
                             "answer": "Pacific"}, {"question": "q", "choices": ["a", "b"], "answer": 0}],
                           source="mixed", model=None)
    assert mixed.kept == 1 and mixed.problems[0]["examples"][0].startswith("row 1: 'answer' is 'Pacific', which "
                                                                           "matches choices 0 and 1")
