"""The ``native`` multiple-choice style against lm-evaluation-harness's own tasks on the embedded SmolLM2-135M-Instruct
and a LoRA adapter on it (random B, so the tuned side differs), on the sample files of tests/test_native_benchmarks.py
(HellaSwag, TruthfulQA MC1/MC2, ARC, OpenBookQA, MMLU 2-shot, HellaSwag 2-shot): the numbers side by side, the largest
per-choice log-likelihood gap, and the wall time of each (the studio scores base and tuned in one batch; the harness
runs each side on its own).

    .venv/bin/python bench/native_mc.py [--repeat N] [--part equality|speed|both]

``--repeat N``: N copies of each file's rows (default 1). ``--part speed``: the scoring speed alone, on identical
requests in one process, alternating rounds (the wall times of the equality part include each side's process start
and model load and move with the machine's load): the studio's base + tuned in one batch against lm-eval's HFLM on
the base model and on base + the adapter (``peft=``), the TruthfulQA and HellaSwag files.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def vary(row: dict, copy: int) -> dict:
    if not copy:
        return row
    key = next(k for k in ("ctx_a", "question_stem", "question") if k in row)
    return {**row, key: f"{row[key]} ({copy})"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--part", default="both", choices=["equality", "speed", "both"])
    args = ap.parse_args()
    os.environ.setdefault("FTS_MODELS_DIR", str(REPO / "workspace" / "models"))
    root = Path(tempfile.mkdtemp(prefix="bench-native-"))
    os.environ["FTS_WORKSPACE"] = str(root / "ws")
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import tests.test_native_benchmarks as T
    from core.data import get_dataset, import_dataset, read_split
    from core.evaluate.job import _slots
    from core.evaluate.multiple_choice import BASE_ADAPTER, score_rows, summarise
    from core.generate import ModelCache, resolve_source
    from core.models import ensure_default_model

    base_dir = ensure_default_model()
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    adapter = root / "adapter"
    peft_model.save_pretrained(str(adapter))
    data = {"hellaswag": T.HELLASWAG, "truthfulqa": T.TRUTHFULQA, "arc": T.ARC, "openbookqa": T.OPENBOOKQA,
            "mmlu": T.MMLU}
    files = {}
    for name, rows in data.items():  # copies differ in their question, so none is dropped as a duplicate
        copies = [vary(r, c) for c in range(args.repeat) for r in rows]
        files[name] = T.write_jsonl(root / f"{name}.jsonl", copies)

    # the studio: imported, scored whole, base + tuned in one batch through the evaluate job's model loading
    tuned_src = resolve_source(str(adapter))
    base_slot, tuned_slot = _slots(ModelCache(budget_bytes=1 << 40), resolve_source(tuned_src.base), tuned_src)
    if args.part in ("speed", "both"):
        speed(base_slot, tuned_slot, base_dir, adapter, [data["truthfulqa"], data["hellaswag"]])
    if args.part == "speed":
        return
    ours, ours_s = {}, {}
    for task, (name, options) in T.STUDIO.items():
        ds = import_dataset(files[name], model=None)
        rows = read_split(get_dataset(ds.dataset_id), "all")
        t0 = time.time()
        scored = score_rows(base_slot.loaded.model, base_slot.loaded.tokenizer, rows, "native",
                            adapter_names=[BASE_ADAPTER, tuned_slot.adapter_name], batch_size=16, **options)
        ours_s[task] = time.time() - t0
        ours[task] = {side: (summarise(scored[key]), scored[key]) for side, key in
                      (("base", BASE_ADAPTER), ("tuned", tuned_slot.adapter_name))}

    # the harness: its own tasks pointed at the same files (the test's task definitions), each side on its own
    spec_tasks = {
        "fts_hellaswag": T.lm_eval_task("fts_hellaswag", "hellaswag/hellaswag.yaml", files["hellaswag"],
                                        "validation", training_split=None),
        "fts_hellaswag_2shot": T.lm_eval_task("fts_hellaswag_2shot", "hellaswag/hellaswag.yaml", files["hellaswag"],
                                              "validation", training_split=None, test_split="validation",
                                              fewshot_split="validation", num_fewshot=2),
        "fts_tqa_mc1": T.lm_eval_task("fts_tqa_mc1", "truthfulqa/truthfulqa_mc1.yaml", files["truthfulqa"],
                                      "validation", metric_list=[{"metric": m, "aggregation": "mean",
                                                                  "higher_is_better": True}
                                                                 for m in ("acc", "acc_norm")]),
        "fts_tqa_mc2": T.lm_eval_task("fts_tqa_mc2", "truthfulqa/truthfulqa_mc2.yaml", files["truthfulqa"],
                                      "validation"),
        "fts_arc": T.lm_eval_task("fts_arc", "arc/arc_easy.yaml", files["arc"], "test", training_split=None,
                                  validation_split=None),
        "fts_obqa": T.lm_eval_task("fts_obqa", "openbookqa/openbookqa.yaml", files["openbookqa"], "test",
                                   training_split=None, validation_split=None),
        "fts_mmlu_2shot": T.lm_eval_task(
            "fts_mmlu_2shot", "mmlu/default/_default_template_yaml", files["mmlu"], "test", fewshot_split="test",
            num_fewshot=2, description="The following are multiple choice questions (with answers) about high "
                                       "school biology.\n\n",
            metric_list=[{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]),
    }
    task_dir = root / "tasks"
    task_dir.mkdir()
    for name, config in spec_tasks.items():
        (task_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    base_args = f"pretrained={base_dir},dtype=float32"
    runner = T.RUNNER.replace("batch_size=8", "batch_size=16").replace(
        'print("LM_EVAL_RESULT "', 'import time\nprint("LM_EVAL_RESULT "')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(root / "hf-datasets"), "TOKENIZERS_PARALLELISM": "false"}
    theirs, theirs_s = {}, {}
    for side, model_args in (("base", base_args), ("tuned", f"{base_args},peft={adapter}")):
        spec = {"include_path": str(task_dir), "tasks": list(spec_tasks), "model_args": {side: model_args}}
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", runner, json.dumps(spec)], env=env, cwd=root,
                              capture_output=True, text=True)
        theirs_s[side] = time.time() - t0
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LM_EVAL_RESULT ")), None)
        if not line:
            sys.exit(proc.stderr[-3000:])
        theirs.update(json.loads(line.split(" ", 1)[1]))

    print(f"SmolLM2-135M-Instruct + a random LoRA (r 8, q/v), fp32, CPU; rows x{args.repeat}\n")
    print("| task | side | metric | studio | lm-eval | max per-choice ll gap |")
    print("|---|---|---|---:|---:|---:|")
    questions = 0
    for task in T.STUDIO:
        for side in ("base", "tuned"):
            summary, per_row = ours[task][side]
            t = theirs[side][task]
            if task == "fts_tqa_mc2":
                pairs, our_lls = [("mc2", t["acc"])], [r["mc2_lls"] for r in per_row]
            else:
                pairs = [(m, t[m]) for m in ("acc", "acc_norm") if m in t]
                our_lls = [r["lls"] for r in per_row]
            gap = max(abs(a - b) for mine, th in zip(our_lls, t["lls"]) for a, b in zip(mine, th))
            for metric, value in pairs:
                print(f"| {task} | {side} | {metric} | {summary[metric]:.4f} | {value:.4f} | {gap:.1e} |")
        questions += ours[task]["base"][0]["n"]
    studio_s = sum(ours_s.values())
    print(f"\nstudio: {studio_s:.1f} s for {questions} questions x 2 sides ({2 * questions / studio_s:.2f} examples/s, "
          "models already loaded)")
    print(f"lm-eval: base {theirs_s['base']:.1f} s + tuned {theirs_s['tuned']:.1f} s (each a process: import, model "
          "load, tasks, scoring)")


def speed(base_slot, tuned_slot, base_dir, adapter, sets, rounds: int = 2) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from core.evaluate.multiple_choice import BASE_ADAPTER, build_requests, score_rows

    requests = []
    for rows in sets:
        _form, reqs = build_requests(rows, "native")
        requests += [(q.context, c) for q in reqs for c in q.continuations]
    harness = {"base": HFLM(pretrained=str(base_dir), dtype="float32", batch_size=16, device="cpu"),
               "tuned": HFLM(pretrained=str(base_dir), dtype="float32", batch_size=16, device="cpu",
                             peft=str(adapter))}
    questions = sum(len(rows) for rows in sets)
    print(f"speed: {questions} questions, {len(requests)} (context, choice) pairs per side")
    for r in range(rounds):
        t0 = time.time()
        for rows in sets:
            score_rows(base_slot.loaded.model, base_slot.loaded.tokenizer, rows, "native",
                       adapter_names=[BASE_ADAPTER, tuned_slot.adapter_name], batch_size=16)
        ours = time.time() - t0
        theirs = {}
        for side, lm in harness.items():
            t0 = time.time()
            lm.loglikelihood([Instance("loglikelihood", {}, pair, 0) for pair in requests], disable_tqdm=True)
            theirs[side] = time.time() - t0
        both = theirs["base"] + theirs["tuned"]
        print(f"round {r + 1}: studio base + tuned in one batch {ours:.1f} s ({2 * questions / ours:.2f} examples/s)"
              f" | lm-eval base {theirs['base']:.1f} s + tuned {theirs['tuned']:.1f} s = {both:.1f} s "
              f"({2 * questions / both:.2f} examples/s)", flush=True)


if __name__ == "__main__":
    main()
