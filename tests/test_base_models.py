"""Instruction-tuning base models that ship no chat template (issue 17), on small random GPT-2 (Conv1D, tied head)
and Llama (untied head) models built here with a tokenizer that has no chat template.

Each model is LoRA-trained for a few steps on the alpaca sample with (a) the Alpaca-style plain-text template (no
new tokens) and (b) ChatML (two new special tokens, trained as PEFT trainable tokens). Then: the run succeeded, the
adapter carries the template, and the same conversation renders to the same string in training, the Data tab's
preview, Evaluate/the Playground (both sides), the merged model folder and the GGUF export.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.base_models import make_base_model
from tests.pages import start_training_from_the_tab

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
COMBOS = [("gpt2", "alpaca"), ("gpt2", "chatml"), ("llama", "alpaca"), ("llama", "chatml")]


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("base-models")
    return {arch: make_base_model(root / arch, arch) for arch in ("gpt2", "llama")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_dirs):
    """One workspace with the four LoRA runs: {(arch, template): {"ws", "run_id", "adapter", "base"}}."""
    from tests.conftest import workspace_env

    ws = tmp_path_factory.mktemp("base-runs") / "ws"
    ws.mkdir()
    with workspace_env(ws):
        from core import runs
        from core.train.config import TrainConfig
        from core.train.jobs import submit_training

        data = str(REPO / "tests" / "fixtures" / "alpaca_en_demo.json")
        ids = {}
        for arch, template in COMBOS:
            cfg = TrainConfig(base_model=str(base_dirs[arch]), dataset=data, method="lora", chat_template=template,
                              max_steps=3, batch_size=4, max_length=128, learning_rate=5e-3, save_steps=0,
                              name=f"{arch}-{template}")
            ids[(arch, template)] = submit_training(cfg).id
        out = {}
        for key, run_id in ids.items():
            run = runs.wait_for(run_id, timeout_s=600)
            assert run.status == "succeeded", runs.log_tail(run_id)
            out[key] = {"ws": ws, "run_id": run_id, "adapter": Path(run.adapter_path), "base": base_dirs[key[0]]}
        yield out


@pytest.fixture
def in_trained_ws(trained, monkeypatch):
    from storage import reset_engines

    monkeypatch.setenv("FTS_WORKSPACE", str(next(iter(trained.values()))["ws"]))
    reset_engines()
    yield trained
    reset_engines()


def _conversation() -> list[dict]:
    row = json.loads((REPO / "tests" / "fixtures" / "alpaca_en_demo.json").read_text(encoding="utf-8"))[1]
    user = row["instruction"] + (f"\n{row['input']}" if row.get("input") else "")
    return [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": user},
            {"role": "assistant", "content": row["output"]}]


# ---- submit-time refusal -------------------------------------------------------------------------------------------

def test_cli_refuses_a_base_model_without_a_template_in_one_line(workspace, base_dirs, fixtures_dir, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"base_model: {base_dirs['gpt2']}\ndataset: {fixtures_dir / 'alpaca_en_demo.json'}\nmax_steps: 2\n")
    p = subprocess.run([sys.executable, "-m", "core", "train", "--config", str(cfg)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip() and "Warning" not in ln and "kernels" not in ln]
    assert len(lines) == 1, p.stderr
    for choice in ("chatml", "llama3", "mistral", "alpaca", "--chat-template"):
        assert choice in lines[0]
    from core import runs

    assert runs.list_runs() == []  # nothing was queued
    # plain text trains without a template; a template to copy from must exist
    from core.train.config import TrainConfig
    from core.train.jobs import JobError, validate_references

    validate_references(TrainConfig(base_model=str(base_dirs["gpt2"]), dataset=str(fixtures_dir / "c4_demo.jsonl")))
    with pytest.raises(JobError, match="not a built-in template"):
        validate_references(TrainConfig(base_model=str(base_dirs["gpt2"]), dataset=str(fixtures_dir /
                                        "alpaca_en_demo.json"), chat_template=str(tmp_path / "no-such-model")))


def test_data_preview_of_a_base_model_asks_for_a_template(base_dirs):
    from core.data import DatasetError
    from core.data.views import preview_of

    row = {"messages": _conversation()}
    with pytest.raises(DatasetError, match="has no chat template.*pick a prompt template"):
        preview_of(row, model=str(base_dirs["llama"]))
    pv = preview_of(row, model=str(base_dirs["llama"]), template="alpaca")
    text = "".join(t for t, _ in pv["segments"])
    assert text.startswith("You are a helpful assistant.\n\n### Instruction:\n") and "### Response:\n" in text
    trained = "".join(t for t, lab in pv["segments"] if lab == "trained")
    assert trained.startswith(_conversation()[2]["content"][:20]) and trained.rstrip().endswith("<|endoftext|>")


# ---- the runs ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,template", COMBOS)
def test_run_succeeds_and_the_adapter_carries_the_template(trained, arch, template):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from core.data.templates import TEMPLATES, read_meta
    from core.inference import TOKEN_DELTA
    from core.runs import log_tail

    t = trained[(arch, template)]
    ad = t["adapter"]
    tok = AutoTokenizer.from_pretrained(ad)
    assert tok.chat_template == TEMPLATES[template].jinja
    meta = read_meta(ad)
    assert meta["template"] == template
    with safe_open(str(ad / "adapter_model.safetensors"), "pt") as f:
        deltas = {k: f.get_slice(k).get_shape() for k in f.keys() if k.endswith(TOKEN_DELTA)}
        assert not [k for k in f.keys() if "base_layer" in k]  # the grown embedding matrix is not saved whole
    cfg = json.loads((ad / "adapter_config.json").read_text())
    log = log_tail(t["run_id"], 200)
    if template == "chatml":
        assert tok.eos_token == "<|im_end|>" and meta["new_tokens"] == ["<|im_start|>", "<|im_end|>"]
        assert meta["vocab_size"] == 802 and len(tok) == 802
        # GPT-2's head is tied to the embedding: only its rows are saved; Llama's untied head has its own
        expected = {"transformer.wte"} if arch == "gpt2" else {"model.embed_tokens", "lm_head"}
        assert {k.removeprefix("base_model.model.").removesuffix(TOKEN_DELTA) for k in deltas} == expected
        assert all(shape == [2, 64] for shape in deltas.values())
        assert "prompt template chatml + 2 new-token embedding row(s) trained (PEFT trainable tokens)" in log
    else:
        assert tok.eos_token == "<|endoftext|>" and meta["new_tokens"] == [] and meta["vocab_size"] == 800
        assert deltas == {} and not cfg.get("trainable_token_indices")
        assert "prompt template alpaca" in log
    if arch == "gpt2":  # LoRA all-linear covers GPT-2's Conv1D layers
        assert cfg["fan_in_fan_out"] is True
        assert {m.rsplit(".", 1)[-1] for m in cfg["target_modules"]} == {"c_attn", "c_proj", "c_fc"}


@pytest.mark.parametrize("arch,template", COMBOS)
def test_the_same_prompt_in_training_data_preview_evaluate_playground_merge_and_gguf(
        in_trained_ws, arch, template, tmp_path):
    from transformers import AutoTokenizer

    from core.data.chat import tokenize_conversation
    from core.data.views import preview_of
    from core.deploy.merge import merge_lora
    from core.evaluate.job import _slots
    from core.generate import ModelCache, render_prompt, source_for_run

    t = in_trained_ws[(arch, template)]
    convo = _conversation()
    prompt = convo[:-1]
    # training: what the worker tokenised, with the tokenizer it saved beside the adapter
    train_tok = AutoTokenizer.from_pretrained(t["adapter"])
    ids = tokenize_conversation(train_tok, convo, max_length=10_000).input_ids
    training_text = train_tok.decode(ids)
    # the Data tab's loss-mask preview with the same template choice
    segments = preview_of({"messages": convo}, model=str(t["base"]), template=template)["segments"]
    assert "".join(s for s, _ in segments) == training_text
    # Evaluate and the Playground: base and tuned sides of a comparison
    tuned_src = source_for_run(t["run_id"])
    from core.generate import ModelSource

    base_src = ModelSource(label="base", base=tuned_src.base, adapter=None)
    base_slot, tuned_slot = _slots(ModelCache(), base_src, tuned_src)
    rendered = render_prompt(tuned_slot.tok, prompt)
    assert render_prompt(base_slot.tok, prompt) == rendered
    assert base_slot.template_from  # the base has none of its own: it borrows the run's
    assert training_text.startswith(rendered) and len(training_text) > len(rendered)
    # the merged model folder (what every server loads)
    merged = tmp_path / "merged"
    info = merge_lora(t["base"], t["adapter"], merged)
    mtok = AutoTokenizer.from_pretrained(merged)
    assert mtok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == rendered
    # servers that read only tokenizer_config.json (TGI) see the same template
    assert json.loads((merged / "tokenizer_config.json").read_text())["chat_template"] == mtok.chat_template
    mcfg = json.loads((merged / "config.json").read_text())
    assert mcfg["vocab_size"] == info["vocab_size"] == len(mtok)
    assert mcfg["eos_token_id"] == mtok.eos_token_id
    gen = json.loads((merged / "generation_config.json").read_text())
    assert mtok.eos_token_id in (gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else
                                 [gen["eos_token_id"]])
    if arch == "llama":  # GGUF export is for Llama-architecture models
        import gguf

        from core.deploy.gguf import export_gguf
        from core.deploy.ollama import _render, write_modelfile

        out = export_gguf(merged, tmp_path / "m.gguf", "f16")
        fields = gguf.GGUFReader(out["path"]).fields
        f = fields["tokenizer.chat_template"]
        gguf_template = bytes(f.parts[f.data[0]]).decode()
        assert _render(gguf_template, prompt, True, mtok.bos_token or "", mtok.eos_token) == rendered
        assert int(fields["tokenizer.ggml.eos_token_id"].parts[-1][0]) == mtok.eos_token_id
        assert len(fields["tokenizer.ggml.tokens"].data) == len(mtok)
        modelfile = write_modelfile(out["path"], merged).read_text()
        assert f'PARAMETER stop "{mtok.eos_token}"' in modelfile
        if template == "chatml":
            assert "chatml chat format" in modelfile and "TEMPLATE" in modelfile


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fast_engine_peft_and_the_merged_model_agree_on_trained_new_tokens(trained, arch, tmp_path):
    """The studio's batched engine (Playground/Evaluate), PEFT, and the merged folder give the same logits for a
    prompt that uses the new tokens, on base rows and tuned rows; the adapter changes them."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.data.templates import grow_vocab, read_meta
    from core.deploy.merge import merge_lora
    from core.generate import ModelCache, ModelSource

    t = trained[(arch, "chatml")]
    tok = AutoTokenizer.from_pretrained(t["adapter"])
    text = tok.apply_chat_template(_conversation(), tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    assert (ids >= 800).sum() >= 6  # the new tokens are in the input

    cache = ModelCache()
    slot = cache.slot(ModelSource(label="tuned", base=str(t["base"]), adapter=str(t["adapter"])))
    assert slot.loaded.engine == "fast"
    with torch.no_grad():
        fast = slot.loaded.model(input_ids=ids.repeat(2, 1), adapter_names=["__base__", slot.adapter_name]).logits
    ref = AutoModelForCausalLM.from_pretrained(t["base"], dtype=torch.float32)
    grow_vocab(ref, read_meta(t["adapter"])["vocab_size"])
    peft = PeftModel.from_pretrained(ref, str(t["adapter"])).eval()
    with torch.no_grad():
        tuned = peft(input_ids=ids).logits[0]
        with peft.disable_adapter():
            base = peft(input_ids=ids).logits[0]
    assert torch.allclose(fast[0], base, atol=1e-4) and torch.allclose(fast[1], tuned, atol=1e-4)
    assert (tuned - base).abs().max() > 1e-2  # the adapter (LoRA + trained token rows) matters
    merge_lora(t["base"], t["adapter"], tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits[0], tuned, atol=1e-4)


def test_the_tuned_model_learns_to_stop_on_the_templates_eos(workspace, base_dirs, tmp_path):
    """Every answer ends with the template's EOS and it carries loss: after training on one-word answers, the tuned
    model answers and stops there — on ChatML's <|im_end|>, a token new to this vocabulary. (That the Alpaca template
    ends answers with the tokenizer's own EOS, with loss on it, is test_data_preview_of_a_base_model_asks_for_a_
    template's.)"""
    arch, template = "llama", "chatml"
    from core import runs
    from core.generate import GenSettings, generate, source_for_run
    from core.train.config import TrainConfig
    from core.train.jobs import submit_training

    data = tmp_path / "ok.json"
    data.write_text(json.dumps([{"instruction": f"Question number {i}: what should I say?", "input": "",
                                 "output": "OK."} for i in range(32)]))
    # a full fine-tune: a 64-wide random model's fixed LM head is too flat for LoRA to make one answer certain
    cfg = TrainConfig(base_model=str(base_dirs[arch]), dataset=str(data), method="full", chat_template=template,
                      max_steps=60, batch_size=8, learning_rate=0.03, max_length=64, save_steps=0)
    run = runs.wait_for(submit_training(cfg).id, timeout_s=600)
    assert run.status == "succeeded", runs.log_tail(run.id)
    # a question from the data: a 2-layer random model learns the answer, not arithmetic on question numbers
    out = generate(source_for_run(run.id), [{"role": "user", "content": "Question number 7: what should I say?"}],
                   GenSettings(max_new_tokens=30))
    assert out.text.strip() == "OK." and out.tokens < 30  # stopped on EOS, long before the limit


def test_recipes_fill_the_form_and_say_what_this_machine_lacks():
    import torch

    from core.train.config import TrainConfig
    from core.train.recipes import RECIPES, recipe_needs
    from ui.train_form import recipe_values

    for r in RECIPES.values():
        TrainConfig(base_model=r.base_model, dataset="1", **r.settings)  # every recipe is a valid config
    values, note = recipe_values("mistral7b-qlora-t4")
    assert values["base_model"] == "mistralai/Mistral-7B-v0.1" and values["method"] == "qlora"
    assert values["chat_template"] == "mistral"
    needs = recipe_needs(RECIPES["mistral7b-qlora-t4"])
    if not torch.cuda.is_available():
        assert any("CUDA GPU" in n for n in needs) and "This machine lacks" in note
    values, note = recipe_values("gpt2-lora")
    assert values["chat_template"] == "alpaca" and "c_attn, c_proj and c_fc" in note
    # the estimator knows both models (catalog entries, no download) and the T4 fits the Mistral recipe
    from core.estimate import estimate_training_memory, load_model_spec
    from core.estimate.report import plan_for_config

    cfg = TrainConfig(base_model="mistralai/Mistral-7B-v0.1", dataset="1", **RECIPES["mistral7b-qlora-t4"].settings)
    est = estimate_training_memory(load_model_spec(cfg.base_model), plan_for_config(cfg, "cuda", False))
    assert est.peak_bytes < 15 * 1024**3


@pytest.mark.browser
def test_the_train_tab_preselects_and_takes_a_prompt_template_for_a_base_model(workspace, base_dirs, fixtures_dir,
                                                                                start_app, browser):
    from playwright.sync_api import expect

    from core import runs

    url = start_app(workspace / "app-base-model.log")
    page = browser.new_page(viewport={"width": 1500, "height": 1400})
    page.goto(url)
    page.get_by_role("tab", name="Train", exact=True).click()
    model = page.get_by_label("Base model", exact=True)
    model.fill(str(base_dirs["llama"]))
    model.press("Enter")
    note = page.locator("#train-template-note")
    expect(note).to_contain_text("has no chat template", timeout=20_000)
    expect(note).to_contain_text("Alpaca-style")  # the tokens of ChatML/Llama-3 are not in its vocabulary
    expect(page.locator("#train-template input")).to_have_value(
        "Alpaca-style plain text (### Instruction: … ### Response:) · no new tokens")
    # pick ChatML instead: its cost is said
    page.locator("#train-template input").click()
    page.get_by_role("option", name="ChatML").click()
    expect(note).to_contain_text("2 special tokens")
    start_training_from_the_tab(page, str(fixtures_dir / "alpaca_en_demo.json"), max_steps=2, batch_size=2,
                                max_length=96)
    expect(page.get_by_text("Run #1")).to_be_visible(timeout=30_000)
    page.screenshot(path=str(workspace / "train_base_model.png"), full_page=True)
    run = runs.wait_for(1, timeout_s=300)
    assert run.status == "succeeded", runs.log_tail(1)
    assert run.config["chat_template"] == "chatml" and run.config["base_model"] == str(base_dirs["llama"])
