"""Multiple-choice scoring (core.evaluate.multiple_choice) on the embedded model: prompts, tokens, log-likelihoods
checked against a one-sequence-at-a-time computation, against the real lm-evaluation-harness, and with PEFT adapters
mixed in one batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

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
