"""Estimate: exact parameter counts, accelerate parity, memory model behaviour, fit table, time/cost,
pre-flight, CLI."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import estimate as E
from core.estimate import (
    EstimateError,
    TrainingPlan,
    accelerate_style,
    count_lora_parameters,
    count_parameters,
    estimate_inference_memory,
    estimate_time_cost,
    estimate_training_memory,
    gpu_fit_table,
    load_model_spec,
    preflight_check,
    spec_from_config,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def offline_hub(monkeypatch):
    """No network: the Hub code path must fail fast and clearly (the env var alone is read once at import)."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def _build(model_type: str, **kw):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, **kw)
    torch.manual_seed(0)
    return cfg, AutoModelForCausalLM.from_config(cfg)


TINY = {
    "llama-gqa-tied": ("llama", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                                     num_key_value_heads=2, vocab_size=211, tie_word_embeddings=True)),
    "llama-gqa-untied": ("llama", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                       num_key_value_heads=2, vocab_size=211, tie_word_embeddings=False)),
    "llama-bias-headdim": ("llama", dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=101,
                                         attention_bias=True, mlp_bias=True)),
    "mistral": ("mistral", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                                num_key_value_heads=2, vocab_size=150)),
    "mixtral-moe": ("mixtral", dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=100)),
    "gpt2": ("gpt2", dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64, bos_token_id=0,
                          eos_token_id=0)),
    "falcon-mqa": ("falcon", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=100)),
    "falcon-new-arch": ("falcon", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                                       new_decoder_architecture=True, bias=True, vocab_size=100)),
    "phi3": ("phi3", dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=100, pad_token_id=0, bos_token_id=0, eos_token_id=0)),
    "phi": ("phi", dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                        vocab_size=100)),
    "qwen2-tied": ("qwen2", dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=100, tie_word_embeddings=True)),
    "qwen3": ("qwen3", dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, vocab_size=100)),
}


# ---------------------------------------------------------------------------------------------------- parameters
def test_default_model_param_count_is_exact(default_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(default_model_dir), dtype=torch.float32)
    spec = load_model_spec("default")
    counts = count_parameters(spec)
    assert counts.total == model.num_parameters() == 134_515_008
    assert counts.lm_head_tied and counts.lm_head == 0
    assert counts.embeddings == 49152 * 576


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_random_configs_param_count_exact(name):
    model_type, kw = TINY[name]
    cfg, model = _build(model_type, **kw)
    spec = spec_from_config(cfg)
    assert count_parameters(spec).total == model.num_parameters(), spec.describe()


def test_moe_total_vs_active():
    cfg, model = _build(TINY["mixtral-moe"][0], **TINY["mixtral-moe"][1])
    counts = count_parameters(spec_from_config(cfg))
    per_layer_experts = 4 * (2 * 48 * 32 + 32 * 48)
    assert counts.experts_total == 2 * per_layer_experts
    assert counts.experts_active == counts.experts_total // 2  # top-2 of 4
    assert counts.active == counts.total - counts.experts_active


def test_catalog_matches_transformers_on_meta_device():
    from transformers import AutoConfig, AutoModelForCausalLM

    for name in E.catalog_names():
        entry = E.catalog_entry(name)
        cfg = dict(entry["config"])
        model_type = cfg.pop("model_type")
        cfg.pop("auto_map", None)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg))
        ours = count_parameters(load_model_spec(name)).total
        assert ours == model.num_parameters() == entry["published_params"], name


@pytest.mark.parametrize("name", ["llama-gqa-untied", "gpt2", "phi3", "falcon-mqa"])
def test_lora_param_count_matches_peft(name):
    from peft import LoraConfig, get_peft_model

    cfg, model = _build(TINY[name][0], **TINY[name][1])
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert count_lora_parameters(spec_from_config(cfg), 4, ["all-linear"]) == trainable


def test_lora_named_targets():
    spec = load_model_spec("Llama-2-7b")
    qv = count_lora_parameters(spec, 8, ["q_proj", "v_proj"])
    assert qv == 32 * 2 * 8 * (4096 + 4096)  # the classic 4,194,304
    with pytest.raises(EstimateError, match="match no linear"):
        count_lora_parameters(spec, 8, ["query_key_value"])


# ---------------------------------------------------------------------------------------------------- accelerate parity
def test_accelerate_style_matches_the_seed_tables():
    phi = accelerate_style(load_model_spec("Phi-3.5-mini-instruct"))
    assert (phi["fp32_gb"], phi["adam_gb"]) == (14.23, 56.94)
    llama = accelerate_style(load_model_spec("meta-llama/Llama-2-13b-hf"))
    assert (llama["fp32_gb"], llama["adam_gb"]) == (47.88, 191.51)
    assert not llama["includes_lm_head"]  # accelerate builds AutoModel (no head) unless auto_map says otherwise


# ---------------------------------------------------------------------------------------------------- memory model
def test_peak_is_max_over_phases_not_a_sum():
    spec = load_model_spec("Mistral-7B-v0.1")
    est = estimate_training_memory(spec, TrainingPlan(method="full", precision="bf16", batch_size=2, seq_len=1024))
    assert est.peak_tensor_bytes == max(est.phases.values())
    tensor_components = sum(c.bytes for c in est.components if c.key not in ("cuda_context", "allocator_slack"))
    assert est.peak_tensor_bytes < tensor_components
    assert est.peak_bytes == est.peak_tensor_bytes + est.overhead_bytes
    comps = est.component_bytes()
    assert comps["weights"] == 2 * 7_241_732_096
    assert comps["optimizer_states"] == 2 * 2 * 7_241_732_096  # bf16 params: torch AdamW states follow param dtype


def test_component_relations():
    spec = load_model_spec("Llama-3.1-8B")
    base = TrainingPlan(method="lora", precision="bf16", batch_size=4, seq_len=2048)
    lora = estimate_training_memory(spec, base)
    ckpt = estimate_training_memory(spec, TrainingPlan(**{**base.__dict__, "gradient_checkpointing": True}))
    eager = estimate_training_memory(spec, TrainingPlan(**{**base.__dict__, "attention": "eager"}))
    qlora = estimate_training_memory(spec, TrainingPlan(**{**base.__dict__, "method": "qlora"}))
    full = estimate_training_memory(spec, TrainingPlan(**{**base.__dict__, "method": "full"}))
    c = lambda e, k: e.component_bytes()[k]
    assert c(ckpt, "activations") < c(lora, "activations") / 5
    assert c(eager, "activations") > c(lora, "activations")
    assert c(qlora, "weights") < c(lora, "weights") / 2.5  # 128k-vocab embeddings stay 16-bit
    assert c(full, "optimizer_states") > 50 * c(lora, "optimizer_states")
    # the logits peak: 12·b·s·V bytes, the largest activation-side term for a 128k vocabulary
    assert c(lora, "logits_loss") == 12 * 4 * 2048 * 128256
    assert lora.trainable_params == count_lora_parameters(spec, 16, ["all-linear"])


def test_qlora_weights_formula():
    spec = load_model_spec("Mistral-7B-v0.1")
    est = estimate_training_memory(spec, TrainingPlan(method="qlora", precision="bf16"))
    counts = count_parameters(spec)
    per = 0.5 + 1 / 64 + 4 / (64 * 256)
    assert est.component_bytes()["weights"] == int(counts.linear * per) + 2 * (counts.total - counts.linear)


def test_optimizers_differ():
    spec = load_model_spec("Qwen2.5-0.5B")
    states = {}
    for opt in E.OPTIMIZERS:
        est = estimate_training_memory(spec, TrainingPlan(method="full", precision="fp32", optimizer=opt))
        states[opt] = est.component_bytes()["optimizer_states"]
    n = count_parameters(spec).total
    assert states["adamw"] == states["paged_adamw"] == 8 * n
    assert states["sgd"] == 0
    assert 2 * n < states["adamw_8bit"] < 2.1 * n
    assert states["adafactor"] < states["adamw_8bit"]


def test_inference_kv_cache_formula():
    spec = load_model_spec("Llama-3.1-8B")
    inf = estimate_inference_memory(spec, "bf16", batch_size=1, context_tokens=8192)
    assert inf.component_bytes()["kv_cache"] == 2 * 32 * 8 * 128 * 2 * 8192  # exactly 1 GiB with GQA
    int4 = estimate_inference_memory(spec, "int4", 1, 8192).component_bytes()["weights"]
    assert int4 < inf.component_bytes()["weights"] / 2.5


# ---------------------------------------------------------------------------------------------------- fit table
def test_fit_table():
    small = gpu_fit_table(load_model_spec("default"), TrainingPlan(method="lora", batch_size=4, seq_len=512))
    assert all(row.verdict == "fits" for row in small)
    big = {r.gpu: r for r in gpu_fit_table(load_model_spec("Llama-2-13b"), TrainingPlan(method="full", seq_len=512))}
    assert big["t4"].verdict == "no" and big["t4"].advice
    assert big["a100-80"].verdict == "no"
    assert big["p5.48xlarge"].sharded_verdict == "fits"
    assert big["t4"].precision == "fp16" and big["a100-80"].precision == "bf16"  # T4 has no bf16
    mistral = {r.gpu: r for r in gpu_fit_table(load_model_spec("Mistral-7B-v0.1"),
                                               TrainingPlan(method="lora", batch_size=4, seq_len=2048))}
    assert mistral["t4"].verdict == "no"
    assert "QLoRA" in mistral["t4"].advice or "checkpointing" in mistral["t4"].advice
    qlora = {r.gpu: r for r in gpu_fit_table(load_model_spec("Mistral-7B-v0.1"),
                                             TrainingPlan(method="qlora", batch_size=1, seq_len=512,
                                                          gradient_checkpointing=True))}
    assert qlora["t4"].verdict == "fits"


# ---------------------------------------------------------------------------------------------------- time and cost
def test_time_cost():
    spec = load_model_spec("Llama-2-7b")
    tc = estimate_time_cost(spec, TrainingPlan(method="full"), tokens=10_000_000, gpu="a100-80", mfu=0.4,
                            price_per_gpu_hour=2.0)
    n = count_parameters(spec).total
    assert tc.flops == 6 * n * 10_000_000
    assert tc.seconds == pytest.approx(tc.flops / (312e12 * 0.4))
    assert tc.cost_usd == pytest.approx(tc.seconds / 3600 * 2.0)
    assert E.flops_multiplier("full", True) == 8 and E.flops_multiplier("lora", False) == 4
    moe = estimate_time_cost(load_model_spec("Mixtral-8x7B-v0.1"), TrainingPlan(method="lora"), 1_000_000, "h100")
    assert moe.params_for_flops == count_parameters(load_model_spec("Mixtral-8x7B-v0.1")).active
    with pytest.raises(EstimateError, match="token count"):
        estimate_time_cost(spec, TrainingPlan(), tokens=0, gpu="t4")
    with pytest.raises(EstimateError, match="MFU"):
        estimate_time_cost(spec, TrainingPlan(), tokens=10, gpu="t4", mfu=1.5)


def test_dataset_token_count_from_data_tab(workspace):
    from core.config import db_session
    from storage import Dataset

    with db_session() as s:
        s.add(Dataset(name="with", content_hash="a", meta={"token_stats": {"model": "default", "total_tokens": 12345,
                                                                          "rows": 10, "mean": 1234.5}}))
        s.add(Dataset(name="without", content_hash="b", meta={}))
    assert E.dataset_token_count(1) == 12345
    assert E.dataset_token_count(2) is None
    labels = E.list_datasets_with_tokens()
    assert [x[1] for x in labels] == [2, 1] and labels[1][2] == 12345
    with pytest.raises(EstimateError, match="not found"):
        E.dataset_token_count(99)


# ---------------------------------------------------------------------------------------------------- pre-flight
def _train_config(**kw):
    from core.train.config import TrainConfig

    return TrainConfig(dataset="1", **kw)


def test_preflight_warns_when_free_memory_is_small():
    res = preflight_check(_train_config(method="full", batch_size=8, max_length=1024), free_bytes=200 * 2**20)
    assert not res.ok
    assert res.estimate_bytes > res.free_bytes
    assert "exceeds" in res.message and "free" in res.message
    assert any(word in res.message for word in ("checkpointing", "QLoRA", "LoRA", "batch size"))


def test_preflight_ok_and_reads_free_memory():
    res = preflight_check(_train_config(method="lora", batch_size=1, max_length=128), free_bytes=64 * 2**30)
    assert res.ok and res.estimate_bytes > 0
    auto = preflight_check(_train_config(method="lora", batch_size=1, max_length=128))
    assert auto.free_bytes is not None and auto.free_bytes > 0  # psutil on CPU, mem_get_info on CUDA
    assert auto.device


def test_preflight_unknown_model_does_not_block(offline_hub):
    res = preflight_check(_train_config(base_model="nobody-here/not-a-model"), free_bytes=10**9)
    assert res.ok and "unavailable" in res.message


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_input_messages(offline_hub, tmp_path):
    spec = load_model_spec("default")
    with pytest.raises(EstimateError, match="batch size"):
        estimate_training_memory(spec, TrainingPlan(batch_size=0))
    with pytest.raises(EstimateError, match="sequence length"):
        estimate_training_memory(spec, TrainingPlan(seq_len=-5))
    with pytest.raises(EstimateError, match="hidden_size"):
        spec_from_config({"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 10,
                          "intermediate_size": 8})
    with pytest.raises(EstimateError, match="must be positive"):
        spec_from_config({"model_type": "llama", "hidden_size": 0, "num_hidden_layers": 2, "num_attention_heads": 2,
                          "vocab_size": 10, "intermediate_size": 8})
    with pytest.raises(EstimateError, match="model_type"):
        spec_from_config({"hidden_size": 8})
    with pytest.raises(EstimateError, match="mixture-of-experts"):
        spec_from_config({"model_type": "mystery_moe", "hidden_size": 8, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "vocab_size": 10, "intermediate_size": 8, "num_experts": 4})
    odd = spec_from_config({"model_type": "mystery", "hidden_size": 8, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "vocab_size": 10, "intermediate_size": 8})
    assert odd.assumed_layout and estimate_training_memory(odd, TrainingPlan()).notes
    with pytest.raises(EstimateError, match="Hub"):
        load_model_spec("nobody-here/not-a-model")
    with pytest.raises(EstimateError, match="not found"):
        load_model_spec("./no/such/dir")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(EstimateError, match="not valid JSON"):
        load_model_spec(str(tmp_path))


def test_local_dir_reads_config_only(tmp_path):
    cfg, _ = _build(TINY["qwen2-tied"][0], **TINY["qwen2-tied"][1])
    cfg.save_pretrained(tmp_path)  # config.json only: no weights at all
    spec = load_model_spec(str(tmp_path))
    assert spec.model_type == "qwen2" and spec.tie_word_embeddings


# ---------------------------------------------------------------------------------------------------- CLI
def _cli(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    E.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_json(capsys):
    code = _cli(["estimate", "--model", "Mistral-7B-v0.1", "--method", "qlora", "--batch-size", "2",
                 "--seq-len", "1024", "--gradient-checkpointing", "--lora-r", "8", "--tokens", "1000000", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("params", "trainable_params", "components", "peak_bytes", "inference_bytes", "gpus"):
        assert key in data
    assert data["params"] == 7_241_732_096
    assert data["trainable_params"] == count_lora_parameters(load_model_spec("Mistral-7B-v0.1"), 8, ["all-linear"])
    assert all(isinstance(v, int) for v in data["components"].values())
    assert {g["gpu"] for g in data["gpus"]} >= {"t4", "l4", "a10g", "a100-40", "a100-80", "h100", "h200", "p5.48xlarge"}
    assert data["time_cost"]["tokens"] == 1_000_000


def test_cli_accepts_torch_and_accelerate_dtype_spellings(capsys):
    for spelling, precision in (("float32", "fp32"), ("torch.bfloat16", "bf16"), ("float16", "fp16"), ("fp32", "fp32")):
        assert _cli(["estimate", "--model", "default", "--dtype", spelling, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["plan"]["precision_requested"] == precision, spelling
    with pytest.raises(SystemExit):
        _cli(["estimate", "--model", "default", "--dtype", "int4"])
    assert "unknown dtype 'int4'" in capsys.readouterr().err


def test_cli_errors_exit_2(capsys, offline_hub):
    assert _cli(["estimate", "--model", "nobody-here/not-a-model", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _cli(["estimate", "--model", "default", "--batch-size", "0"]) == 2


@pytest.mark.skipif(not (REPO / "core" / "__main__.py").exists(), reason="core/__main__.py not wired yet")
def test_cli_subprocess():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "core", "estimate", "--model", "Llama-2-13b", "--method", "full",
                          "--json"], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["params"] == 13_015_864_320 and data["accelerate_style"]["adam_gb"] == 191.51
    bad = subprocess.run([sys.executable, "-m", "core", "estimate", "--model", "nobody-here/nothing"], cwd=REPO,
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_the_maths_imports_no_torch_and_no_database():
    """spec, memory and gpus are pure: importing them (the package included) pulls in no torch and no SQL."""
    code = ("import sys; import core.estimate.spec, core.estimate.memory, core.estimate.gpus; "
            "print(sorted(m for m in ('torch', 'sqlmodel', 'sqlalchemy', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_phases_are_the_sums_of_what_the_components_hold():
    spec = load_model_spec("default")
    for plan in (TrainingPlan(method="full", precision="fp16", grad_accum=4, gradient_checkpointing=True),
                 TrainingPlan(method="qlora", precision="bf16", attention="eager"),
                 TrainingPlan(method="lora", precision="fp32", device="cpu")):
        est = estimate_training_memory(spec, plan)
        for phase, total in est.phases.items():
            assert total == int(sum(c.by_phase.get(phase, 0) for c in est.components))
        for c in est.components:  # a component's size is the most it holds in any phase
            if c.by_phase:
                assert c.bytes == int(max(c.by_phase.values()))


# ---------------------------------------------------------------------------------------------------- new tokens
def _with_tokens(spec, plan, n):
    from dataclasses import replace

    return estimate_training_memory(spec, replace(plan, new_tokens=n))


def test_no_new_tokens_changes_nothing():
    """new_tokens=0 (the default, every run without a template) keeps the vocabulary-sized terms at V."""
    for name, method in (("Llama-3.1-8B", "lora"), ("Mistral-7B-v0.1", "qlora"), ("default", "full")):
        spec = load_model_spec(name)
        plan = TrainingPlan(method=method, precision="bf16", batch_size=2, seq_len=512)
        est = _with_tokens(spec, plan, 0)
        comps = est.component_bytes()
        assert not any(k.startswith("new_token") for k in comps), name
        assert comps["logits_loss"] == 12 * 2 * 512 * spec.vocab_size
        assert est.params == count_parameters(spec).total
        assert est.peak_bytes == estimate_training_memory(spec, plan).peak_bytes
        assert not any("new token" in n for n in est.notes)
    with pytest.raises(EstimateError, match="new tokens"):
        estimate_training_memory(load_model_spec("default"), TrainingPlan(new_tokens=-1))


def test_new_tokens_lora_costs_trainable_tokens_copies():
    """LoRA + 2 new tokens on Llama-3.1-8B (untied, V=128,256, h=4,096): the vocabulary grows to V+2, PEFT trainable
    tokens hold the lm_head's merged V×h copy from forward to its backward (two with its dense gradient), and the
    embedding's dense V×h gradient at the end of backward; the delta rows are n·h per adapted layer, fp32."""
    from core.estimate.memory import BACKWARD, BACKWARD_END, BACKWARD_START, FORWARD, OPTIMIZER_STEP

    spec = load_model_spec("Llama-3.1-8B")
    plan = TrainingPlan(method="lora", precision="bf16", batch_size=4, seq_len=2048)
    before, after = estimate_training_memory(spec, plan), _with_tokens(spec, plan, 2)
    V, h, T = 128_256 + 2, 4096, 4 * 2048
    copy = 2 * V * h  # bf16 weights
    merged = next(c for c in after.components if c.key == "new_token_merged_copies")
    assert merged.by_phase[FORWARD] == merged.by_phase[BACKWARD_START] == copy  # bf16: the cast input is counted
    assert merged.by_phase[BACKWARD] == 2 * copy == merged.bytes
    assert merged.by_phase[BACKWARD_END] == copy and merged.by_phase.get(OPTIMIZER_STEP, 0) == 0
    rows = next(c for c in after.components if c.key == "new_token_rows")
    delta = 2 * h * 2  # embedding + lm_head adapters
    assert rows.bytes == delta * (4 + 4 + 4 + 8)  # fp32 delta, originals, grad, two AdamW states
    assert "2 tokens" in rows.label
    assert after.trainable_params - before.trainable_params == delta
    assert after.component_bytes()["logits_loss"] == 12 * T * V
    assert after.component_bytes()["weights"] - before.component_bytes()["weights"] == 2 * (2 * 2 * h)  # 2 rows × 2
    # the peak (backward start here) carries the lm_head's merged copy on top of the grown vocabulary
    grown_logits = 12 * T * 2
    assert after.peak_phase == BACKWARD_START
    assert after.peak_tensor_bytes - before.peak_tensor_bytes == copy + rows.by_phase[BACKWARD_START] + \
        grown_logits + 2 * 2 * 2 * h
    # scales with V·h: the same plan on Mistral-7B (V=32,000, same h) pays a quarter of the copy
    mistral = _with_tokens(load_model_spec("Mistral-7B-v0.1"), plan, 2).component_bytes()
    assert mistral["new_token_merged_copies"] == 2 * 2 * (32_000 + 2) * 4096


def test_new_tokens_tied_vs_untied_and_fp32_head_input():
    """Tied embeddings: one shared set of delta rows, but PEFT wraps the lm_head with a tied adapter that builds its
    own merged copy, so the V×h copies are the same; fp32 (no autocast copy) adds the lm_head input kept for its
    weight gradient."""
    from dataclasses import replace

    untied = load_model_spec("Mistral-7B-v0.1")
    tied = replace(untied, tie_word_embeddings=True)
    plan = TrainingPlan(method="lora", precision="fp32", batch_size=2, seq_len=256, device="cpu")
    u, t = _with_tokens(untied, plan, 3).component_bytes(), _with_tokens(tied, plan, 3).component_bytes()
    V, h, T = 32_003, 4096, 2 * 256
    assert u["new_token_merged_copies"] == t["new_token_merged_copies"] == 2 * 4 * V * h + 4 * h * T
    assert u["new_token_rows"] == 2 * t["new_token_rows"] == 2 * 3 * h * 20
    tied_est = _with_tokens(tied, plan, 3)
    assert tied_est.trainable_params - estimate_training_memory(tied, plan).trainable_params == 3 * h


def test_new_tokens_full_fine_tune_grows_the_vocabulary():
    """Full fine-tuning trains every row anyway: new tokens are n more embedding (+ lm_head) rows — weights,
    gradients, optimizer states and logits grow, no trainable-tokens terms."""
    spec = load_model_spec("Mistral-7B-v0.1")  # untied
    plan = TrainingPlan(method="full", precision="bf16", batch_size=1, seq_len=512)
    before, after = estimate_training_memory(spec, plan).component_bytes(), _with_tokens(spec, plan, 2)
    comps = after.component_bytes()
    rows = 2 * 2 * 4096  # 2 tokens × (embedding + lm_head) × h
    assert not any(k.startswith("new_token") for k in comps)
    assert comps["weights"] - before["weights"] == 2 * rows
    assert comps["gradients"] - before["gradients"] == 2 * rows
    assert comps["optimizer_states"] - before["optimizer_states"] == 2 * 2 * rows
    assert comps["lm_head_grad"] == 2 * 32_002 * 4096
    assert comps["logits_loss"] - before["logits_loss"] == 12 * 512 * 2
    assert after.params == count_parameters(spec).total + rows
    assert any("32,000 → 32,002" in n for n in after.notes)


def test_plan_for_config_counts_the_template_tokens(tmp_path, default_model_dir):
    from core.estimate import plan_for_config
    from core.estimate.report import template_new_tokens
    from tests.base_models import make_base_model

    base = make_base_model(tmp_path / "gpt2", "gpt2")  # byte-level BPE whose only special token is <|endoftext|>
    plan = lambda **kw: plan_for_config(_train_config(base_model=str(base), **kw), device="cpu",
                                        bf16_supported=False)
    assert plan(chat_template="chatml").new_tokens == 2  # <|im_start|>, <|im_end|>: new to this vocabulary
    assert plan(chat_template="llama3").new_tokens == 3
    assert plan(chat_template="alpaca").new_tokens == 0  # plain text, the tokenizer's own EOS
    assert plan(chat_template="mistral").new_tokens == 0
    assert plan().new_tokens == 0
    # the embedded SmolLM2 already has ChatML's tokens and a chat template: nothing to train
    assert template_new_tokens("default", "chatml") == 0
    # a Hub model that is not on this machine is not downloaded: the template's own token count
    assert template_new_tokens("nobody-here/not-a-model", "chatml") == 2
    assert template_new_tokens("nobody-here/not-a-model", "nobody-here/another") == 0
    assert template_new_tokens(str(base), str(tmp_path / "missing")) == 0  # never raises
    spec = load_model_spec(str(base))
    est = estimate_training_memory(spec, plan(chat_template="chatml"))
    assert est.component_bytes()["new_token_merged_copies"] == 2 * 4 * (spec.vocab_size + 2) * 64 + 4 * 64 * 4 * 512
    res = preflight_check(_train_config(base_model=str(base), chat_template="chatml"), free_bytes=64 * 2**30)
    assert res.ok and res.estimate_bytes > preflight_check(_train_config(base_model=str(base)),
                                                           free_bytes=64 * 2**30).estimate_bytes


def test_cli_new_tokens(capsys):
    assert _cli(["estimate", "--model", "Mistral-7B-v0.1", "--new-tokens", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plan"]["new_tokens"] == 2
    assert data["components"]["new_token_merged_copies"] == 2 * 2 * 32_002 * 4096
    assert _cli(["estimate", "--model", "Mistral-7B-v0.1", "--chat-template", "llama3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["new_tokens"] == 3
    assert _cli(["estimate", "--model", "default", "--new-tokens", "-1"]) == 2
    assert "new tokens" in capsys.readouterr().err
