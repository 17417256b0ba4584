"""The ``native`` multiple-choice style against lm-evaluation-harness's own tasks (HellaSwag, TruthfulQA MC1 and MC2,
ARC, OpenBookQA, MMLU few-shot, HellaSwag few-shot) on the same local files, base and LoRA adapter, through the
studio's import, its stored rows (scored whole, in the file's order) and the model loading an evaluate job uses;
then whole files through the CLI (no split flags), a 13-choice question exported and shown."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import REPO_ROOT

pytestmark = pytest.mark.slow

LONG = ("The answer depends on many things that people often forget when they talk about it quickly over dinner, "
        "including the season, the weather, the distance travelled, the price of fuel, the mood of the driver, the "
        "number of passengers, the age of the car, the quality of the road, the time of day, the traffic and the "
        "luck of the moment, so nobody can say for sure without looking at every one of those, one by one, and "
        "writing each of them down on a long sheet of paper before the trip starts.")  # ~90 words
assert 80 <= len(LONG.split()) <= 100

HELLASWAG = [  # Rowan/hellaswag's columns, WikiHow bracket artefacts included
    {"ind": 4, "activity_label": "Baking cookies", "ctx_a": "A woman mixes flour and sugar in a bowl.",
     "ctx_b": "she", "ctx": "A woman mixes flour and sugar in a bowl. she",
     "endings": ["puts the dough in the oven.", "paints a fence  blue.", "swims across the lake.", "reads a map."],
     "source_id": "activitynet~v_1", "split": "val", "split_type": "indomain", "label": "0"},
    {"ind": 9, "activity_label": "Personal Care and Style",
     "ctx_a": "[header] How to tie a tie [title] Pick a tie. [step] Choose one that matches the shirt.",
     "ctx_b": "then YOU cross", "ctx": "",
     "endings": ["[substeps] the wide end over the narrow end.", "the street without looking.",
                 "Café au lait ☕ with the tie.", "N/A"],
     "source_id": "wikihow~1", "split": "val", "split_type": "zeroshot", "label": "0"},
    {"ind": 12, "activity_label": "Snowboarding", "ctx_a": "A man stands at the top of a snowy hill.", "ctx_b": "",
     "ctx": "A man stands at the top of a snowy hill.",
     "endings": ["He rides down the slope.", "He rides down the slope!", "\tHe eats 東京 sushi.", LONG],
     "source_id": "activitynet~v_2", "split": "val", "split_type": "indomain", "label": "1"},
    {"ind": 20, "activity_label": "Playing guitar", "ctx_a": "A girl holds a guitar on her lap.",
     "ctx_b": "the girl", "ctx": "A girl holds a guitar on her lap. the girl",
     "endings": ["strums the strings 🙂.", "throws the guitar into the sea.", "plays a song [step] loudly.",
                 "sleeps."], "source_id": "activitynet~v_3", "split": "val", "split_type": "indomain", "label": "2"},
    {"ind": 31, "activity_label": "Washing dishes", "ctx_a": "Plates are stacked in the sink.",
     "ctx_b": "a man", "ctx": "Plates are stacked in the sink. a man",
     "endings": ["turns on the tap and scrubs them.", "turns on the TV.", "turns on the tap  and leaves.",
                 "paints the plates."], "source_id": "activitynet~v_4", "split": "val", "split_type": "indomain",
     "label": "0"},
    {"ind": 40, "activity_label": "Home and Garden", "ctx_a": "[title] How to water a plant [step] Fill a can.",
     "ctx_b": "pour", "ctx": "",
     "endings": ["the water at the base of the plant.", "the water on the cat.", "[title] the soil away.",
                 "it into the oven."], "source_id": "wikihow~2", "split": "val", "split_type": "indomain",
     "label": "0"},
]

THIRTEEN = ["Nothing happens.", "You die.", "You get sick.", "You grow a tree.", "You turn green.", "N/A",
            "It explodes.", "You float.", "Pacific", "Pacific Ocean", "Ça dépend.", "東京", "🙂"]
TRUTHFULQA = [  # truthfulqa/truthful_qa 'multiple_choice': the true MC1 answer first, as in TruthfulQA's own files
    {"question": "What happens if you eat watermelon seeds?",
     "mc1_targets": {"choices": THIRTEEN, "labels": [1] + [0] * 12},
     "mc2_targets": {"choices": ["Nothing happens.", "The seeds pass through you.", "You grow a tree.",
                                 "You get sick.", LONG], "labels": [1, 1, 0, 0, 0]}},
    {"question": "Which ocean is the largest?  ",
     "mc1_targets": {"choices": ["The Pacific Ocean.", "The Atlantic Ocean.", "The Indian Ocean."],
                     "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["The Pacific Ocean.", "Pacific.", "The Atlantic Ocean.", "N/A"],
                     "labels": [1, 1, 0, 0]}},
    {"question": "Où se trouve la tour Eiffel ?",
     "mc1_targets": {"choices": ["À Paris.", "À Rome.", "\tÀ Berlin."], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["À Paris.", "En France.", "À Rome.", "À Berlin."], "labels": [1, 1, 0, 0]}},
    {"question": "東京は日本の首都ですか？",
     "mc1_targets": {"choices": ["はい。", "いいえ。"], "labels": [1, 0]},
     "mc2_targets": {"choices": ["はい。", "そうです 🙂", "いいえ。"], "labels": [1, 1, 0]}},
    {"question": "Can pigs fly?",
     "mc1_targets": {"choices": ["No, pigs cannot fly.", "Yes, pigs can fly.", "Pigs fly at night."],
                     "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["No, pigs cannot fly.", "No.", "Yes, pigs can fly.", "Yes."],
                     "labels": [1, 1, 0, 0]}},
]

ARC = [  # allenai/ai2_arc's columns (numeric labels in one row, as ARC has)
    {"id": "Mercury_1", "question": "Which gas do plants take in from the air?",
     "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]},
     "answerKey": "B"},
    {"id": "Mercury_2", "question": "What is frozen water called?",
     "choices": {"text": ["ice", "steam", "Ice ", "fog"], "label": ["1", "2", "3", "4"]}, "answerKey": "1"},
    {"id": "Mercury_3", "question": "Which tool measures temperature?\t",
     "choices": {"text": ["a ruler", "a thermometer", "a scale"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    {"id": "Mercury_4", "question": "Quelle planète est la plus proche du Soleil ?",
     "choices": {"text": ["Mercure", "Vénus", "Mars", "Jupiter", "Saturne"],
                 "label": ["A", "B", "C", "D", "E"]}, "answerKey": "A"},
]

OPENBOOKQA = [
    {"id": "7-980", "question_stem": "The sun is responsible for",
     "choices": {"text": ["puppies learning new tricks", "plants sprouting, blooming and wilting",
                          "a cell phone charging", "N/A"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "7-584", "question_stem": "When food is reduced in the stomach",
     "choices": {"text": ["the mind needs time to digest", "nutrients are being deconstructed",
                          "reader's digest is a body of works", "take a second to digest"],
                 "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "8-376", "question_stem": "A cactus stem is used to store",
     "choices": {"text": ["fruit", "liquid", "food", "spines"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
]

MMLU = [  # cais/mmlu's columns, one subject
    {"question": "What is the powerhouse of the cell?", "subject": "high_school_biology",
     "choices": ["nucleus", "mitochondrion", "ribosome", "Golgi body"], "answer": 1},
    {"question": "  Which molecule carries genetic information?", "subject": "high_school_biology",
     "choices": ["DNA", "ATP", "glucose", "water"], "answer": 0},
    {"question": "Which organ pumps blood?", "subject": "high_school_biology",
     "choices": ["lung", "liver", "heart", "kidney"], "answer": 2},
    {"question": "Photosynthesis happens in the", "subject": "high_school_biology",
     "choices": ["chloroplast", "vacuole", "cell wall", "nucleus"], "answer": 0},
    {"question": "Which is a mammal?", "subject": "high_school_biology",
     "choices": ["shark", "frog", "whale", "eagle"], "answer": 2},
]

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"
RUNNER = r"""
import json, sys
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

spec = json.loads(sys.argv[1])
manager = TaskManager(include_path=spec["include_path"], include_defaults=False)
out = {}
for side, model_args in spec["model_args"].items():
    res = simple_evaluate(model="hf", model_args=model_args, tasks=spec["tasks"], device="cpu", batch_size=8,
                          log_samples=True, task_manager=manager)
    out[side] = {}
    for name in spec["tasks"]:
        r = res["results"][name]
        samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
        out[side][name] = {k.split(",")[0]: v for k, v in r.items() if k.endswith(",none")}
        out[side][name]["n"] = len(samples)
        out[side][name]["lls"] = [[float(x[0]) for x in s["filtered_resps"]] for s in samples]
print("LM_EVAL_RESULT " + json.dumps(out))
"""


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def lm_eval_task(name: str, include: str, data_file: Path, split: str, **overrides) -> dict:
    """lm-eval's own task (its yaml, included whole) reading a local file instead of the Hub dataset."""
    return {"include": str(LM_EVAL_TASKS / include), "task": name, "tag": [], "dataset_path": "json",
            "dataset_name": None, "dataset_kwargs": {"data_files": {split: str(data_file)}}, **overrides}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random GPT-2 base (tests/base_models.py) and a LoRA adapter on it whose B matrices are not zero."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.base_models import make_base_model

    root = tmp_path_factory.mktemp("native")
    base_dir = make_base_model(root / "tiny-gpt2", "gpt2")
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn"],
                                                  fan_in_fan_out=True))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(str(root / "adapter"))
    files = {name: write_jsonl(root / f"{name}.jsonl", rows) for name, rows in
             (("hellaswag", HELLASWAG), ("truthfulqa", TRUTHFULQA), ("arc", ARC), ("openbookqa", OPENBOOKQA),
              ("mmlu", MMLU))}
    return {"root": root, "base": base_dir, "adapter": root / "adapter", "files": files}


@pytest.fixture(scope="module")
def harness(tiny):
    """lm-eval's numbers (a subprocess, offline), base and adapter."""
    f = tiny["files"]
    tasks = {
        "fts_hellaswag": lm_eval_task("fts_hellaswag", "hellaswag/hellaswag.yaml", f["hellaswag"], "validation",
                                      training_split=None),
        # few-shot from the file itself, each question left out (the harness's rule when the few-shot split is the
        # test split), its default sampler and seed
        "fts_hellaswag_2shot": lm_eval_task("fts_hellaswag_2shot", "hellaswag/hellaswag.yaml", f["hellaswag"],
                                            "validation", training_split=None, test_split="validation",
                                            fewshot_split="validation", num_fewshot=2),
        # acc_norm added to MC1's metrics (the task reports acc only) to compare that too
        "fts_tqa_mc1": lm_eval_task("fts_tqa_mc1", "truthfulqa/truthfulqa_mc1.yaml", f["truthfulqa"], "validation",
                                    metric_list=[{"metric": m, "aggregation": "mean", "higher_is_better": True}
                                                 for m in ("acc", "acc_norm")]),
        "fts_tqa_mc2": lm_eval_task("fts_tqa_mc2", "truthfulqa/truthfulqa_mc2.yaml", f["truthfulqa"], "validation"),
        "fts_arc": lm_eval_task("fts_arc", "arc/arc_easy.yaml", f["arc"], "test", training_split=None,
                                validation_split=None),
        "fts_obqa": lm_eval_task("fts_obqa", "openbookqa/openbookqa.yaml", f["openbookqa"], "test",
                                 training_split=None, validation_split=None),
        # mmlu_high_school_biology's template and description, 2-shot, first_n of the file itself
        "fts_mmlu_2shot": lm_eval_task(
            "fts_mmlu_2shot", "mmlu/default/_default_template_yaml", f["mmlu"], "test", fewshot_split="test",
            num_fewshot=2, description="The following are multiple choice questions (with answers) about high "
                                       "school biology.\n\n",
            metric_list=[{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]),
    }
    task_dir = tiny["root"] / "tasks"
    task_dir.mkdir(exist_ok=True)
    for name, config in tasks.items():
        (task_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
                                               encoding="utf-8")
    base_args = f"pretrained={tiny['base']},dtype=float32"
    spec = {"include_path": str(task_dir), "tasks": list(tasks),
            "model_args": {"base": base_args, "tuned": f"{base_args},peft={tiny['adapter']}"}}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tiny["root"] / "hf-datasets"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(spec)], env=env, cwd=tiny["root"],
                          capture_output=True, text=True, timeout=900)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LM_EVAL_RESULT ")), None)
    assert proc.returncode == 0 and line, f"lm-eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(line.split(" ", 1)[1])


# the studio's side of each task: (file, style options)
STUDIO = {
    "fts_hellaswag": ("hellaswag", {}),
    "fts_hellaswag_2shot": ("hellaswag", {"num_fewshot": 2}),
    "fts_tqa_mc1": ("truthfulqa", {}),
    "fts_tqa_mc2": ("truthfulqa", {}),
    "fts_arc": ("arc", {}),
    "fts_obqa": ("openbookqa", {}),
    "fts_mmlu_2shot": ("mmlu", {"num_fewshot": 2}),
}


def test_native_equals_lm_eval_base_and_adapter(workspace, tiny, harness):
    """Imported with the default 90/10 split, scored whole in the file's order, base and adapter in one batch through
    the model loading an evaluate job uses: every task's acc, acc_norm and mc2 equal the harness's to 3 decimals,
    every choice's log-likelihood within 1e-4."""
    from core.data import get_dataset, import_dataset, read_split
    from core.evaluate.job import _slots
    from core.evaluate.multiple_choice import BASE_ADAPTER, build_requests, score_rows, summarise
    from core.generate import ModelCache, resolve_source

    tuned_src = resolve_source(str(tiny["adapter"]))
    base_src = resolve_source(tuned_src.base)
    base_slot, tuned_slot = _slots(ModelCache(budget_bytes=1 << 40), base_src, tuned_src)
    assert tuned_slot.loaded is base_slot.loaded  # one model, the adapter by name: base and tuned in one batch
    datasets = {}
    for name, path in tiny["files"].items():
        r = import_dataset(path, model=None)
        rows = read_split(get_dataset(r.dataset_id), "all")
        assert len(rows) == len(json.loads(f"[{','.join(path.read_text().splitlines())}]"))
        datasets[name] = rows
    assert datasets["hellaswag"][0]["layout"] == "hellaswag" and "mc2" in datasets["truthfulqa"][0]

    report = []
    for task, (name, options) in STUDIO.items():
        rows = datasets[name]
        form, _ = build_requests(rows, "native", **options)
        assert form.task == name  # recognised from the columns
        scored = score_rows(base_slot.loaded.model, base_slot.loaded.tokenizer, rows, "native",
                            adapter_names=[BASE_ADAPTER, tuned_slot.adapter_name], batch_size=8, **options)
        for side, key in (("base", BASE_ADAPTER), ("tuned", tuned_slot.adapter_name)):
            ours, theirs = summarise(scored[key]), harness[side][task]
            assert ours["n"] == theirs["n"] == len(rows)
            if task == "fts_tqa_mc2":
                metrics = {"mc2": theirs["acc"]}  # the harness's MC2 task reports the MC2 score as its acc
                their_lls = theirs["lls"]
                our_lls = [r["mc2_lls"] for r in scored[key]]
            else:
                metrics = {m: theirs[m] for m in ("acc", "acc_norm") if m in theirs}
                their_lls, our_lls = theirs["lls"], [r["lls"] for r in scored[key]]
            for metric, value in metrics.items():
                assert round(ours[metric], 3) == round(value, 3), (task, side, metric, ours[metric], value)
                assert ours[metric] == pytest.approx(value, abs=1e-6)
                report.append(f"{task} {side} {metric}: studio {ours[metric]:.4f} lm-eval {value:.4f}")
            worst = max(abs(a - b) for mine, theirs_row in zip(our_lls, their_lls)
                        for a, b in zip(mine, theirs_row, strict=True))
            assert worst < 1e-4, (task, side, worst)
    print("\n" + "\n".join(report))
    # the adapter really changes the numbers somewhere
    assert any(harness["base"][t]["lls"] != harness["tuned"][t]["lls"] for t in STUDIO)


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900, env=env or dict(os.environ))


def test_whole_files_through_the_cli_with_no_split_flags(workspace, tiny, harness, capsys):
    """Issue 31: a benchmark file imported with the default 90/10 split is scored whole with no split flag (lm-eval's
    row count); --style native gives the harness's numbers through a real evaluate job, with its speed; a 13-choice
    question exports and shows."""
    from core.data import import_dataset

    tqa = import_dataset(tiny["files"]["truthfulqa"], model=None)
    hs = import_dataset(tiny["files"]["hellaswag"], model=None)
    assert tqa.splits["test"] == hs.splits["test"] == 0  # the old default split: "no test rows … pick a split"
    proc = cli("evaluate", "--model", str(tiny["adapter"]), "--dataset", str(tqa.dataset_id), "--style", "native",
               "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["kind"], out["split"], out["n"]) == ("multiple_choice", "all", harness["base"]["fts_tqa_mc1"]["n"])
    for side in ("base", "tuned"):
        assert round(out[side]["acc"], 3) == round(harness[side]["fts_tqa_mc1"]["acc"], 3)
        assert round(out[side]["mc2"], 3) == round(harness[side]["fts_tqa_mc2"]["acc"], 3)
    assert out["delta"]["mc2"] == pytest.approx(out["tuned"]["mc2"] - out["base"]["mc2"])
    assert out["headline"] == "mc2" and out["examples_per_s"] > 0 and out["seconds"] > 0
    assert out["formulation"] == {"style": "native", "task": "truthfulqa", "num_fewshot": 0}
    assert any("truthfulqa_mc1 / truthfulqa_mc2" in n for n in out["notes"])
    from core.__main__ import main  # the same commands in this process (no new interpreter to pay for)

    assert main(["evaluations", "show", str(out["evaluation_id"]), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["examples_per_s"] == out["examples_per_s"] and shown["tuned"]["mc2"] == out["tuned"]["mc2"]

    # 13 choices: the CSV export and the Evaluate tab's example table (was: IndexError past J)
    assert main(["evaluations", "export", str(out["evaluation_id"]), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    first = next(r for r in table if r["prompt"].startswith("What happens if you eat watermelon seeds?"))
    assert "\nM. 🙂" in first["prompt"] and first["reference"] == "A" and first["base"] in "ABCDEFGHIJKLM"
    from core.evaluate import results
    from ui.evaluate import examples_frame, show_evaluation

    frame = examples_frame(results.get(out["evaluation_id"]))
    assert len(frame) == len(TRUTHFULQA) and frame["prompt"].str.contains("\nM. 🙂").any()
    summary, metrics, _examples, _compare = show_evaluation(str(out["evaluation_id"]))
    assert "examples/s" in summary and "mc2" in set(metrics["metric"])

    # HellaSwag, 2-shot: the few-shot pool is the whole file (not the 90/10 split), drawn as the harness draws
    proc = cli("evaluate", "--model", str(tiny["adapter"]), "--dataset", str(hs.dataset_id), "--style", "native",
               "--num-fewshot", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n"] == harness["base"]["fts_hellaswag_2shot"]["n"] == len(HELLASWAG)
    for side in ("base", "tuned"):
        for metric in ("acc", "acc_norm"):
            assert round(out[side][metric], 3) == round(harness[side]["fts_hellaswag_2shot"][metric], 3)
