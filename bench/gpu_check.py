"""GPU check, ready to fire: the studio's training path on 8B-class shapes, one JSON line per measure.

    .venv/bin/python bench/gpu_check.py --cpu-tiny        # every measure on tiny configs, on this CPU (< 2 min)
    python3 bench/gpu_check.py                            # the real check: needs CUDA (one H100: < 8 min)

Models are built from configs with random weights (no download; throughput and memory do not depend on weight values)
and saved once per shape to a scratch folder, so every measure loads them the way the studio does (from a local model
folder):
  llama3-8b-shape   hidden 4096, 32 layers, 32 heads / 8 KV heads, intermediate 14336, vocab 128256, untied head
  mistral-7b-shape  hidden 4096, 32 layers, 32 heads / 8 KV heads, intermediate 14336, vocab 32000, untied head
  --cpu-tiny        the same two families at hidden 64, 2 layers, 4 / 2 heads, intermediate 224, vocab 1024 / 512
Tokenizer and data: synthetic token ids. Each shape's folder gets a word-level tokenizer whose words are the numbers
2..vocab-1 (0 = pad, 1 = eos); every data row is {"text": "<random ids>"} longer than max_length, so every example is
exactly max_length tokens in both our path and plain TRL (same tokens per step; text rows: every token has a label).

Measures (each prints one JSON line with `measure`, `model`, the settings, the numbers and `device`):
  prepare      build the random model and save it (seconds, bytes on disk)
  lora         our training path: core.train.build.build_trainer on a real run row (TrainConfig: LoRA r=16 all-linear,
               packing + our packed SDPA, no gradient checkpointing), trainer.train(); step_s, tokens_per_s,
               peak_bytes vs the Estimate tab's estimate_bytes (core.estimate: load_model_spec + plan_for_config +
               estimate_report, peak_tensor_bytes), ratio = peak / estimate
  qlora        the same with method qlora (bitsandbytes 4-bit NF4); skipped with the worker's own reason where
               bitsandbytes cannot load (on a CPU bitsandbytes' CPU backend runs it, as the studio does)
  plain_trl    a plain TRL SFTTrainer at its defaults (what a user writes) on the same model folder and data;
  ours_vs_trl  then one line with the tokens/s ratio ours / plain (and the peak memory of each)
  attention    our loss path (tokenize_rows, PaddingFreeCollator, labelled_positions_loss, the worker's load_model)
               with each attention: fts_packed_sdpa (ours), sdpa (transformers' packed mask), flash_attention_2 where
               flash_attn is installed and CUDA is there (else a skipped line)
  distributed  with >= 2 GPUs: the lora measure under torchrun (DDP through the Trainer, as `accelerate launch` runs the
               worker); --cpu-tiny: 2 gloo processes on the tiny config; 1 GPU: a skipped line
  summary      the last line: counts of ok / skipped / failed lines, wall seconds
Peak memory: CUDA torch.cuda.max_memory_allocated (reset after the model is loaded, so weights count; compare with
the estimate's peak_tensor_bytes; max_memory_reserved vs its peak_bytes is printed too). CPU: bench/calibrate_memory's
method (live model tensors + the profiler's allocation events during the steps; the profiler slows CPU steps).

Budget (one H100, default: batch 4 x max_length 1024 = 4096 tokens/step, 10 steps of which the last 8 are timed).
LoRA step on 8B ~ 4 x 8e9 x 4096 = 1.3e14 FLOP -> ~0.35 s at 400 TFLOP/s, say <= 1 s; QLoRA and plain TRL (gradient
checkpointing on by TRL's default) <= 1.5 s. Expected seconds: prepare 2 x 45 (init on the GPU + 16 GB write);
lora 2 x 45 (imports 10 + load 16 GB 20 + 10 steps); qlora 2 x 60 (quantise on load); plain_trl 55; attention 60
(one load, 2-3 attentions x 5 steps) = ~415 s = 7 min. Each measure runs in its own process with a hard cap (caps
below), and none starts once the whole check would pass --budget-s (470 s): the check ends under 8 minutes.
--cpu-tiny runs the single-process measures in one process (imports paid once); --isolate runs them one process each,
as the real check does (the caps and the budget guard then run here too: try --budget-s 75).

Fire it on a lent GPU machine. The device image (Python 3.12, torch 2.11+cu130) has torch, transformers 5.17, peft,
accelerate; not trl, datasets, bitsandbytes, sqlmodel/pydantic. Here, once: `bash bench/gpu_check_wheels.sh` (fills
.whl/, ignored by git, with what must travel at this project's pins, and checks it fits the 64 MiB a call carries,
tracked tree included: 30.6 MiB + 1.9 MiB). Then the device tool's `run`, kind left out (an H100 first), carry
[".whl"], timeout_s 560 (leaves device time for a partial rerun with --only), command (one line):
    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
    --target /tmp/site .whl/*.whl || exit; export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1;
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader;
    python3 bench/gpu_check.py --json-out $OUT/gpu_check.jsonl --log $OUT/measures.log
The JSON lines come back in output_tail and $OUT/gpu_check.jsonl, each measure's own output in $OUT/measures.log.
Put the figures in bench/RESULTS.md ("GPU check"), naming the card. Exit status: 0 all ran or were skipped with a
reason, 1 a measure failed (its line says why), 2 bad arguments or no CUDA in the real mode.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = time.time()  # the budget counts from here: imports included
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# ---- the studio's code this check runs: every studio name used below comes through this block.
from bench.calibrate_memory import _live_model_tensors, _storage_bytes  # what the weights and quant state hold
from core import estimate  # estimate.load_model_spec, estimate.plan_for_config, estimate.estimate_report
from core.data import load_training_rows
from core.models import load_tokenizer, resolve_model
from core.runs import store  # store.submit: the run row a worker's JobContext stands on
from core.runs.worker import JobContext
from core.train.build import build_trainer  # our path, as the worker builds it
from core.train.config import TrainConfig
from core.train.device import pick_precision, qlora_support_error
from core.train.model import load_model  # the attention measure
from core.train.setup import effective_setup
from core.train.tokenize import PaddingFreeCollator, labelled_positions_loss, tokenize_rows

# ---- shapes ----------------------------------------------------------------------------------------------------------
REAL_SHAPES = {
    "llama3-8b-shape": ("llama", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                                      rope_theta=500000.0, max_position_embeddings=8192)),
    "mistral-7b-shape": ("mistral", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                         num_key_value_heads=8, intermediate_size=14336, vocab_size=32000,
                                         rope_theta=1000000.0, max_position_embeddings=32768, sliding_window=None)),
}
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=224)
TINY_SHAPES = {
    "llama3-8b-shape-tiny": ("llama", dict(REAL_SHAPES["llama3-8b-shape"][1], **TINY, vocab_size=1024)),
    "mistral-7b-shape-tiny": ("mistral", dict(REAL_SHAPES["mistral-7b-shape"][1], **TINY, vocab_size=512)),
}
# seconds: hard cap of one measure's process on the GPU, and what it is expected to take (the budget guard)
CAPS_S = {"prepare": 150, "lora": 150, "qlora": 180, "plain_trl": 150, "attention": 150, "distributed": 180}
EXPECTED_S = {"prepare": 45, "lora": 45, "qlora": 60, "plain_trl": 55, "attention": 60, "distributed": 90}
PAD_ID, EOS_ID = 0, 1


# ---- helpers ---------------------------------------------------------------------------------------------------------
def device_label() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "flash_attn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def save_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer over the numbers 2..vocab_size-1: the data's words are the token ids themselves."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "<eos>": EOS_ID, **{str(i): i for i in range(2, vocab_size)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))  # noqa: S106 - a token, not a password
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>",  # noqa: S106 - tokens
                                  unk_token="<pad>")  # noqa: S106
    tok.model_max_length = 1 << 20
    tok.save_pretrained(folder)


def write_data(path: Path, vocab_size: int, rows: int, max_length: int, seed: int = 0) -> None:
    rnd = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(rows):
            f.write(json.dumps({"text": " ".join(str(rnd.randrange(2, vocab_size)) for _ in range(max_length + 8))})
                    + "\n")


class PeakMemory:
    """Peak tensor bytes of what runs inside the block. CUDA: max_memory_allocated from the block's start (what is
    allocated then, the weights, counts). CPU: bench/calibrate_memory's method — the live model state plus the peak of
    the running sum of the profiler's CPU allocation events."""

    def __init__(self, device: str, model=None):
        self.device, self.model = device, model
        self.peak_bytes = self.reserved_bytes = None

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            from torch.profiler import ProfilerActivity, profile

            self.base = _storage_bytes(_live_model_tensors(self.model))
            self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = int(torch.cuda.max_memory_allocated())
            self.reserved_bytes = int(torch.cuda.max_memory_reserved())
            return False
        self.prof.__exit__(*exc)
        if exc[0] is not None:
            return False
        events = sorted((e.start_ns(), e.nbytes()) for e in self.prof.profiler.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type().name == "CPU")
        running = peak = 0
        for _, n in events:
            running += n
            peak = max(peak, running)
        self.peak_bytes = int(self.base + peak)
        return False


def step_clock(tokens_seen):
    """A TrainerCallback noting (time, tokens) at the end of every optimizer step (CUDA synchronised)."""
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        marks: list[tuple[float, int]] = []

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), tokens_seen()))

    Clock.marks = []
    return Clock()


def timing(marks: list[tuple[float, int]], warmup: int, world: int = 1) -> dict:
    """step_s and tokens_per_s from the end of step `warmup` to the end of the last step (all ranks' tokens)."""
    if warmup < 1 or len(marks) <= warmup:
        raise RuntimeError(f"{len(marks)} steps ran: need at least one warm-up step and one timed step after it")
    (t0, k0), (t1, k1) = marks[warmup - 1], marks[-1]
    steps = len(marks) - warmup
    return {"steps_timed": steps, "step_s": round((t1 - t0) / steps, 4),
            "tokens_per_step": int((k1 - k0) * world / steps), "tokens_per_s": round((k1 - k0) * world / (t1 - t0), 1)}


def estimate_for(config: TrainConfig, model_dir: str, device: str, precision_bf16: bool) -> dict:
    """What the Estimate tab says for this config on this device (peak tensor bytes, and with CUDA context/slack)."""
    spec = estimate.load_model_spec(model_dir)
    plan = estimate.plan_for_config(config, device=device, bf16_supported=precision_bf16)
    rep = estimate.estimate_report(spec, plan)
    return {"estimate_bytes": int(rep["peak_tensor_bytes"]), "estimate_peak_bytes": int(rep["peak_bytes"]),
            "estimate_phase": rep["peak_phase"]}


def job_context(config: TrainConfig, run_id: int | None = None) -> JobContext:
    run = store.get(run_id) if run_id else store.submit("train", config.model_dump(), name=config.name,
                                                        base_model=config.base_model, method=config.method)
    return JobContext(run)


# ---- the measures (run in a child process) ---------------------------------------------------------------------------
def m_prepare(job: dict) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    family, shape = job["shape"]
    folder = Path(job["model_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    cfg = AutoConfig.for_model(family, **shape, tie_word_embeddings=False, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
                               bos_token_id=None)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):  # no 16 GB fp32 init on the CPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    init_s = time.perf_counter() - t
    model.save_pretrained(folder)
    save_tokenizer(folder, shape["vocab_size"])
    del model
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return {"params": params, "dtype": str(dtype).replace("torch.", ""), "init_s": round(init_s, 2),
            "save_s": round(time.perf_counter() - t - init_s, 2), "disk_bytes": size}


def our_config(job: dict, method: str) -> TrainConfig:
    return TrainConfig(name=f"gpu-check-{job['model']}-{method}", base_model=job["model_dir"], dataset=job["data"],
                       method=method, batch_size=job["batch"], max_length=job["seq"], max_steps=job["steps"],
                       save_steps=0, logging_steps=1, lora_r=16, lora_alpha=32, packing=True,
                       gradient_checkpointing=False, num_gpus=max(1, job.get("world", 1)))


def m_train(job: dict) -> dict:
    """lora / qlora / distributed: our worker's trainer, as a run trains."""
    method = job["method"]
    if method == "qlora" and qlora_support_error():
        return {"skipped": qlora_support_error()}
    config = our_config(job, method)
    ctx = job_context(config, job.get("run_id"))
    t = time.perf_counter()
    trainer, _tok, _counts = build_trainer(ctx, config)
    load_s = time.perf_counter() - t
    cls = type(trainer)
    clock = step_clock(lambda: cls.tokens_seen)
    trainer.add_callback(clock)
    plan = pick_precision(config.precision)
    setup = effective_setup(config, plan)
    with PeakMemory(plan.device, trainer.model) as mem:
        trainer.train()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    out = {"method": method, "precision": plan.precision, "attention": setup.attention, "packing": setup.packing,
           "gradient_checkpointing": setup.gradient_checkpointing, "lora_r": config.lora_r, "batch": config.batch_size,
           "seq": config.max_length, "world_size": world, "load_s": round(load_s, 2),
           **timing(clock.marks, job["warmup"], world), "peak_bytes": mem.peak_bytes}
    if mem.reserved_bytes is not None:
        out["reserved_bytes"] = mem.reserved_bytes
    out.update(estimate_for(config, job["model_dir"], plan.device, plan.precision == "bf16"))
    out["ratio"] = round(out["peak_bytes"] / out["estimate_bytes"], 3)
    if world > 1:
        out["note"] = f"DDP over {world} processes through the Trainer; peak_bytes and estimate are rank 0's"
    elif method == "qlora" and plan.device == "cpu":
        out["note"] = "bitsandbytes' CPU backend (the studio's CPU QLoRA path: fp32 adapters)"
    return out


def m_plain_trl(job: dict) -> dict:
    """A plain TRL SFTTrainer at its defaults on the same folder and data (bench/plain_trl_sft.py, device-aware)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    rows = [json.loads(line) for line in open(job["data"])]
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(job["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.bfloat16 if cuda else torch.float32)
    tokens = {"n": 0}

    class CountingSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, *a, **kw):
            if model.training:
                tokens["n"] += (int(inputs["attention_mask"].sum()) if "attention_mask" in inputs
                                else inputs["input_ids"].numel())
            return super().compute_loss(model, inputs, *a, **kw)

    clock = step_clock(lambda: tokens["n"])
    device_args = {} if cuda else {"use_cpu": True, "bf16": False, "fp16": False}
    cfg = SFTConfig(output_dir=str(Path(job["work"]) / "plain-sft"), max_steps=job["steps"],
                    per_device_train_batch_size=job["batch"], max_length=job["seq"], report_to=[], logging_steps=1,
                    save_strategy="no", learning_rate=2e-4, disable_tqdm=True, **device_args)
    trainer = CountingSFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                                 peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                        task_type="CAUSAL_LM"),
                                 callbacks=[clock])
    load_s = time.perf_counter() - t
    ckpt = bool(getattr(cfg, "activation_checkpointing", None) or getattr(cfg, "gradient_checkpointing", False))
    with PeakMemory("cuda" if cuda else "cpu", trainer.model) as mem:
        trainer.train()
    out = {"method": "lora", "precision": "bf16" if cfg.bf16 else "fp32", "attention": "sdpa", "packing": cfg.packing,
           "padding_free": cfg.padding_free, "gradient_checkpointing": ckpt, "lora_r": 16, "batch": job["batch"],
           "seq": job["seq"], "load_s": round(load_s, 2), **timing(clock.marks, job["warmup"]),
           "peak_bytes": mem.peak_bytes}
    if mem.reserved_bytes is not None:
        out["reserved_bytes"] = mem.reserved_bytes
    same = our_config(job, "lora").model_copy(update={"gradient_checkpointing": ckpt})
    out.update(estimate_for(same, job["model_dir"], "cuda" if cuda else "cpu", cuda))
    out["ratio"] = round(out["peak_bytes"] / out["estimate_bytes"], 3)
    return out


def m_attention(job: dict) -> list[dict]:
    """Our loss path with each attention implementation on one loaded model (LoRA, as the worker loads it)."""
    import importlib.util

    import torch

    config = our_config(job, "lora")
    plan = pick_precision(config.precision)
    setup = effective_setup(config, plan)
    resolved = resolve_model(config.base_model)
    tok = load_tokenizer(resolved)
    rows = load_training_rows(config.dataset)
    examples, _ = tokenize_rows(tok, rows, config.max_length)
    t = time.perf_counter()
    model, _ids, _rows = load_model(config, plan, setup, resolved, tok, None, True)
    model.to(plan.device)
    model.train()
    load_s = round(time.perf_counter() - t, 2)
    collate = PaddingFreeCollator(tok.pad_token_id)
    b = config.batch_size
    batches = [{k: (v.to(plan.device) if torch.is_tensor(v) else v) for k, v in collate(examples[i:i + b]).items()}
               for i in range(0, b * job["steps"], b) if len(examples[i:i + b]) == b]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast(plan.device, dtype=torch.bfloat16, enabled=plan.precision == "bf16")

    def step(batch):
        with autocast:
            loss, _ = labelled_positions_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    variants = [setup.attention, "sdpa", "flash_attention_2"]
    lines, base_tps = [], None
    for name in variants:
        line = {"attention": name, "packing": True, "batch": b, "seq": config.max_length, "load_s": load_s}
        if name == "flash_attention_2":
            if importlib.util.find_spec("flash_attn") is None:
                lines.append({**line, "skipped": "flash_attn is not installed here"})
                continue
            if plan.device != "cuda":
                lines.append({**line, "skipped": "flash attention needs a CUDA GPU"})
                continue
        model.set_attn_implementation(name)
        step(batches[0])  # warm-up
        if plan.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        n = 0
        for batch in batches[1:]:
            step(batch)
            n += batch["input_ids"].numel()
        if plan.device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        tps = n / dt
        base_tps = base_tps or tps
        lines.append({**line, "steps_timed": len(batches) - 1, "step_s": round(dt / (len(batches) - 1), 4),
                      "tokens_per_s": round(tps, 1), "vs_ours": round(tps / base_tps, 3)})
    return lines


MEASURES = {"prepare": m_prepare, "lora": m_train, "qlora": m_train, "distributed": m_train,
            "plain_trl": m_plain_trl, "attention": m_attention}


def run_child(jobs_file: str) -> int:
    """Run the jobs in order; one JSON line each on the real stdout (library chatter goes to stderr)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    jobs = json.loads(Path(jobs_file).read_text())
    rank0 = int(os.environ.get("RANK", "0")) == 0
    dev = device_label()
    for job in jobs:
        head = {"measure": job["measure"], "model": job["model"]}
        t = time.perf_counter()
        try:
            res = MEASURES[job["measure"]](job)
        except Exception as exc:  # noqa: BLE001 - a failed measure is a line, and the next one runs
            res = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        for r in (res if isinstance(res, list) else [res]):
            if rank0:
                out.write(json.dumps({**head, **r, "wall_s": round(time.perf_counter() - t, 2), "device": dev}) + "\n")
    return 0


# ---- the orchestrator ------------------------------------------------------------------------------------------------
def plan_jobs(args, work: Path, cuda_gpus: int) -> list[list[dict]]:
    """Groups of jobs; each group is one child process (real mode: one measure each)."""
    shapes = TINY_SHAPES if args.cpu_tiny else REAL_SHAPES
    groups: list[list[dict]] = []
    for i, (model, (family, shape)) in enumerate(shapes.items()):
        model_dir = work / model
        data = work / f"{model}.jsonl"
        write_data(data, shape["vocab_size"], (args.steps + 2) * args.batch * max(2, cuda_gpus), args.seq, seed=i)
        common = {"model": model, "model_dir": str(model_dir), "data": str(data), "shape": [family, shape],
                  "batch": args.batch, "seq": args.seq, "steps": args.steps, "warmup": args.warmup, "work": str(work)}
        names = ["lora"] + (["plain_trl", "attention"] if i == 0 else []) + ["qlora"]
        if i == len(shapes) - 1:
            names.append("distributed")
        names = [n for n in names if not args.only or n in args.only or (n == "lora" and "plain_trl" in args.only)]
        if not names:  # nothing measured on this shape: not even built
            continue
        for name in ["prepare", *names]:
            job = {**common, "measure": name, "method": {"qlora": "qlora"}.get(name, "lora")}
            groups.append([job])
        groups.append([{"measure": "_cleanup", "model": model, "model_dir": str(model_dir)}])
    return groups


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-tiny", action="store_true", help="tiny configs on the CPU (the tested path)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per measure (default 10; tiny 3)")
    ap.add_argument("--warmup", type=int, default=None, help="steps left out of the timing (default 2; tiny 1)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=None, help="max_length (default 1024; tiny 64)")
    ap.add_argument("--budget-s", type=float, default=None, help="no measure starts past this (default 470; tiny 300)")
    ap.add_argument("--only", nargs="*", choices=["lora", "qlora", "plain_trl", "attention", "distributed"],
                    help="measures to run (the shapes they need are prepared; plain_trl brings lora for the ratio)")
    ap.add_argument("--work-dir", default=None, help="scratch folder for the random models (default: a temp dir)")
    ap.add_argument("--json-out", default=None, help="also write the JSON lines to this file")
    ap.add_argument("--log", default=None, help="the measures' own output, one file (default: in the work dir)")
    ap.add_argument("--no-distributed", action="store_true", help="skip the distributed measure")
    ap.add_argument("--isolate", action="store_true",
                    help="--cpu-tiny: each measure in its own process, as the real check runs them")
    ap.add_argument("--_run", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run:
        return run_child(args._run)

    import torch

    tiny = args.cpu_tiny
    args.steps = args.steps or (3 if tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 2)
    args.seq = args.seq or (64 if tiny else 1024)
    budget = args.budget_s or (300.0 if tiny else 470.0)
    if not 1 <= args.warmup < args.steps:
        print(f"--warmup must be at least 1 and less than --steps (got {args.warmup}, {args.steps})", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not tiny and not gpus:
        print("the real GPU check needs a CUDA GPU and this machine has none: run --cpu-tiny here", file=sys.stderr)
        return 2
    started = T0
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fts-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FTS_WORKSPACE": str(work / "ws"), "FTS_WORKER_NICE": "0", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the tiny check is the CPU path, GPU or not
    sink = open(args.json_out, "w") if args.json_out else None
    lines: list[dict] = []

    def emit(line: dict) -> None:
        lines.append(line)
        text = json.dumps(line)
        print(text, flush=True)
        if sink:
            sink.write(text + "\n")
            sink.flush()

    emit({"measure": "environment", "model": None, "mode": "cpu-tiny" if tiny else "gpu", "gpus": gpus,
          "steps": args.steps, "warmup": args.warmup, "batch": args.batch, "seq": args.seq, "budget_s": budget,
          **versions(), "device": "cpu (tiny configs)" if tiny else f"cuda x{gpus}"})
    groups = plan_jobs(args, work, 0 if tiny else gpus)
    if tiny and not args.isolate:  # one process for every single-process measure: the imports are paid once
        single = [g[0] for g in groups if g[0]["measure"] not in ("distributed", "_cleanup")]
        rest = [g for g in groups if g[0]["measure"] in ("distributed", "_cleanup")]
        groups = [single] + rest
    results: dict[tuple[str, str], dict] = {}
    log = Path(args.log) if args.log else work / "measures.log"
    log.write_text("")
    for group in groups:
        first = group[0]
        if first["measure"] == "_cleanup":
            shutil.rmtree(first["model_dir"], ignore_errors=True)
            continue
        left = budget - (time.time() - started)
        expected = sum(EXPECTED_S[j["measure"]] for j in group) * (0.2 if tiny else 1.0)
        if first["measure"] == "distributed":
            why = None
            if args.no_distributed:
                why = "--no-distributed"
            elif not tiny and gpus < 2:
                why = f"{gpus} GPU here: DDP needs 2 or more"
            if why:
                emit({"measure": "distributed", "model": first["model"], "skipped": why,
                      "device": "cpu" if tiny else f"cuda x{gpus}"})
                continue
        if left < expected:
            for j in group:
                emit({"measure": j["measure"], "model": j["model"],
                      "skipped": f"budget: {max(0.0, left):.0f} s left of {budget:.0f}, this needs ~{expected:.0f} s"})
            continue
        cap = min(left, sum(CAPS_S[j["measure"]] for j in group) * (2.0 if tiny else 1.0))
        jobs_file = work / f"jobs-{len(results)}-{first['measure']}.json"
        cmd = [sys.executable, __file__, "--_run", str(jobs_file)]
        if first["measure"] == "distributed":
            n = 2 if tiny else gpus
            first["world"] = n
            first["run_id"] = _pre_run(env, our_config(first, "lora"))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   __file__, "--_run", str(jobs_file)]
        jobs_file.write_text(json.dumps(group))
        got = run_group(cmd, env, cap, log, jobs_file.stem)
        seen = {(ln["measure"], ln["model"]) for ln in got["lines"]}
        for line in got["lines"]:
            emit(line)
            results.setdefault((line["measure"], line["model"]), line)
        for j in group:
            if (j["measure"], j["model"]) not in seen:
                emit({"measure": j["measure"], "model": j["model"], "error": got["why"],
                      "device": "cpu" if tiny else "cuda"})
        for j in group:
            if j["measure"] == "plain_trl":
                emit(ours_vs_trl(results.get(("lora", j["model"])), results.get(("plain_trl", j["model"])),
                                 j["model"]))
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    for ln in lines[1:]:
        counts["failed" if "error" in ln else "skipped" if "skipped" in ln else "ok"] += 1
    emit({"measure": "summary", "model": None, "mode": "cpu-tiny" if tiny else "gpu", **counts,
          "wall_s": round(time.time() - started, 1), "work_dir": str(work), "device": lines[0]["device"]})
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if counts["failed"] else 0


def ours_vs_trl(ours: dict | None, plain: dict | None, model: str) -> dict:
    line = {"measure": "ours_vs_trl", "model": model}
    if not ours or not plain or "tokens_per_s" not in ours or "tokens_per_s" not in plain:
        return {**line, "error": "the lora or the plain_trl measure has no tokens_per_s"}
    return {**line, "ours_tokens_per_s": ours["tokens_per_s"], "plain_tokens_per_s": plain["tokens_per_s"],
            "ratio": round(ours["tokens_per_s"] / plain["tokens_per_s"], 3), "ours_peak_bytes": ours["peak_bytes"],
            "plain_peak_bytes": plain["peak_bytes"],
            "settings": {"ours": {k: ours.get(k) for k in ("attention", "packing", "gradient_checkpointing")},
                         "plain": {k: plain.get(k) for k in ("attention", "packing", "gradient_checkpointing")}},
            "device": ours.get("device")}


def _pre_run(env: dict, config: TrainConfig) -> int:
    """The run row a multi-process run stands on exists before its processes start (as the runs core does)."""
    saved = os.environ.get("FTS_WORKSPACE")
    os.environ["FTS_WORKSPACE"] = env["FTS_WORKSPACE"]
    try:
        return int(store.submit("train", config.model_dump(), name=config.name, base_model=config.base_model,
                                method=config.method).id)
    finally:
        if saved is None:
            os.environ.pop("FTS_WORKSPACE", None)
        else:
            os.environ["FTS_WORKSPACE"] = saved


def run_group(cmd: list[str], env: dict, cap_s: float, log: Path, label: str) -> dict:
    """Run one child with a hard time cap (its output appended to ``log``); its JSON lines, and why it ended early
    if it did."""
    with open(log, "a") as err:
        err.write(f"==== {label}: {' '.join(cmd)}\n")
        err.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=cap_s)
            why = f"the measure's process ended with exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            stdout, _ = proc.communicate()
            why = f"timed out after {cap_s:.0f} s (the measure's cap)"
    got = [json.loads(s) for s in stdout.splitlines() if s.startswith("{")]
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    return {"lines": got, "why": why + (": " + " | ".join(tail)[-600:] if tail else "")}


if __name__ == "__main__":
    raise SystemExit(main())
