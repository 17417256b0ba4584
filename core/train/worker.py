"""The training worker: one run, in its own process.

    python -m core.train.worker --run-id 7

It reads the run's TrainConfig from the DB, trains with TRL's SFTTrainer + PEFT, writes progress into
``run_metrics`` as it goes, saves checkpoints (with optimizer state) and the final adapter under
``workspace/runs/<id>/``, and records how it ended. SIGTERM asks for a graceful stop: checkpoint, then exit.
For more than one GPU the same module is started through ``accelerate launch`` (see core/jobs.py); only the main
process writes to the DB.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from core.config import db_session, get_settings
from core.train.config import TrainConfig
from storage import Run, RunMetric, RunStatus
from storage.tables import utcnow

HEARTBEAT_S = 5.0


class StopRequested(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def apply_process_limits() -> None:
    """Be a good neighbour of the dashboard on the same machine: lower priority, optional thread cap."""
    settings = get_settings()
    try:
        if settings.worker_nice:
            os.nice(settings.worker_nice)
    except OSError:
        pass
    if settings.worker_threads:
        import torch

        torch.set_num_threads(settings.worker_threads)


def cap_memory() -> None:
    """FTS_WORKER_MAX_MEMORY_GB: cap the worker's extra address space once the libraries are loaded, so running
    out of memory is a clean, reported failure of this run instead of the OS killing something on the machine."""
    cap = get_settings().worker_max_memory_bytes
    if not cap:
        return
    import resource

    import psutil

    limit = psutil.Process().memory_info().vms + cap
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    log(f"memory cap: {cap / 1024**3:.2f} GB above the loaded libraries")


def update_run(run_id: int, **fields) -> None:
    with db_session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise SystemExit(f"run {run_id} not found")
        for k, v in fields.items():
            setattr(run, k, v)
        s.add(run)


def friendly_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    oom_words = ("out of memory", "can't allocate memory", "cannot allocate memory")
    if any(w in low for w in oom_words) or type(exc).__name__ in ("OutOfMemoryError", "MemoryError"):
        return (
            "out of memory: the model, batch and sequence length do not fit on this device. Lower batch_size "
            "(raise grad_accum to keep the effective batch), lower max_length, enable gradient_checkpointing or use "
            f"QLoRA. ({text[:300]})"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full while writing run files: free space under the workspace and resume the run. ({text[:300]})"
    return text[:2000]


class Heartbeat(threading.Thread):
    def __init__(self, run_id: int):
        super().__init__(daemon=True)
        self.run_id = run_id
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(HEARTBEAT_S):
            try:
                update_run(self.run_id, heartbeat_at=utcnow())
            except Exception:
                pass


def build_trainer(run_id: int, config: TrainConfig, run_dir: Path, stop_flag: threading.Event):
    """Everything from config to a ready SFTTrainer. Heavy imports happen here, in the worker only."""
    import torch
    from datasets import Dataset as HFDataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from core.data import load_training_rows
    from core.models import load_tokenizer, resolve_model
    from core.train.device import pick_precision, qlora_support_error
    from core.train.tokenize import PaddingFreeCollator, count_real_tokens, labelled_positions_loss, tokenize_rows

    plan = pick_precision(config.precision)
    log(f"device {plan.description}, precision {plan.precision}, method {config.method}")
    resolved = resolve_model(config.base_model)
    tokenizer = load_tokenizer(resolved)

    rows = load_training_rows(config.dataset, split="train")
    examples, counts = tokenize_rows(tokenizer, rows, config.max_length)
    log(f"dataset: {counts}")
    if not examples:
        raise ValueError("no training examples left after tokenisation (every row lost its assistant tokens)")
    eval_examples = None
    if config.eval_split > 0:
        import random

        rnd = random.Random(config.seed)
        rnd.shuffle(examples)
        n_eval = max(1, int(len(examples) * config.eval_split))
        eval_examples, examples = examples[:n_eval], examples[n_eval:]
    elif config.eval_steps > 0:  # the dataset's own validation split, only when it will be evaluated
        try:
            val_rows = load_training_rows(config.dataset, split="validation")
        except Exception:
            val_rows = []
        if val_rows:
            eval_examples, _ = tokenize_rows(tokenizer, val_rows, config.max_length)

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[plan.precision]
    load_dtype = torch.float32 if plan.precision == "fp16" else dtype  # fp16 AMP needs fp32 master weights
    from core.train.attention import register as register_packed_attention

    # padding-free batches: causal SDPA per packed example (plain SDPA + block mask when not packing)
    attn = register_packed_attention() if config.packing else "sdpa"
    model_kwargs: dict = {"dtype": load_dtype, "attn_implementation": attn}
    if config.method == "qlora":
        err = qlora_support_error()
        if err:
            raise RuntimeError(err)
        from transformers import BitsAndBytesConfig

        compute_dtype = torch.float32 if plan.device == "cpu" else dtype
        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=compute_dtype,
        )
        if plan.device == "cuda":
            model_kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = AutoModelForCausalLM.from_pretrained(resolved.path, **model_kwargs)
    model.config.use_cache = False

    if config.method in ("lora", "qlora"):
        # QLoRA: no prepare_model_for_kbit_training — its fp32 upcast of embeddings/lm_head costs memory the
        # estimator (and QLoRA's point) does not budget; SFTTrainer enables input grads for checkpointing itself.
        if config.init_adapter:
            log(f"continuing from adapter {config.init_adapter}")
            model = PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
        else:
            targets = config.lora_target_modules
            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules="all-linear" if targets == ["all-linear"] else targets,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"trainable params {trainable:,} of {total:,}")

    ckpt_dir = run_dir / "checkpoints"
    save_steps = config.save_steps if config.save_steps > 0 else 10**9
    args = SFTConfig(
        output_dir=str(ckpt_dir),
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        bf16=plan.precision == "bf16",
        fp16=plan.precision == "fp16",
        use_cpu=plan.device == "cpu",
        gradient_checkpointing=config.gradient_checkpointing and config.method != "qlora",
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=config.save_total_limit or None,
        eval_strategy="steps" if eval_examples and config.eval_steps > 0 else "no",
        eval_steps=config.eval_steps or None,
        report_to=[],
        dataloader_num_workers=0,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        padding_free=False,  # we pass our own padding-free collator (TRL's refuses custom collators)
        train_sampling_strategy="group_by_length" if config.group_by_length and not config.packing else "random",
        disable_tqdm=True,
    )

    train_ds = HFDataset.from_list(examples)
    eval_ds = HFDataset.from_list(eval_examples) if eval_examples else None
    collator = PaddingFreeCollator(pad_token_id=tokenizer.pad_token_id, padding_free=config.packing)

    class StudioTrainer(SFTTrainer):
        """SFTTrainer whose loss projects through the LM head only where a label exists (no wasted work)."""

        tokens_seen = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                StudioTrainer.tokens_seen += count_real_tokens(inputs)
            loss, outputs = labelled_positions_loss(model, inputs, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

    callback = MetricsCallback(run_id, stop_flag, lambda: StudioTrainer.tokens_seen)
    cap_memory()
    trainer = StudioTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[callback],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our callback already logs each step in one line
    if config.method == "qlora" and plan.device == "cpu":
        # TRL casts QLoRA adapters to bf16 (right on GPUs); on a CPU bf16 matmuls are 15-30x slower than fp32
        for p in trainer.model.parameters():
            if p.requires_grad and p.dtype == torch.bfloat16:
                p.data = p.data.float()
    if config.method == "qlora":
        n4 = sum(1 for m in trainer.model.modules()
                 if type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes"))
        log(f"QLoRA: {n4} linear layers in 4-bit NF4")
    return trainer, tokenizer, counts


def _memory_bytes() -> int | None:
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def make_metrics_callback_class():
    from transformers import TrainerCallback

    class _MetricsCallback(TrainerCallback):
        """Writes progress into the DB as it happens and turns a stop request into checkpoint-then-stop."""

        def __init__(self, run_id: int, stop_flag: threading.Event, tokens_seen):
            self.run_id = run_id
            self.stop_flag = stop_flag
            self.tokens_seen = tokens_seen
            self.t0 = time.time()
            self.tokens0 = 0
            self.step0 = 0
            self.last_tps: float | None = None
            self.window: list[tuple[float, int]] = []

        def on_train_begin(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            self.t0 = time.time()
            self.step0 = state.global_step
            self.tokens0 = self.tokens_seen()
            update_run(self.run_id, max_steps=state.max_steps, step=state.global_step)
            log(f"training: {state.max_steps} steps (starting at {state.global_step})")

        def on_step_end(self, args, state, control, **kw):
            if self.stop_flag.is_set():
                log(f"stop requested: saving checkpoint at step {state.global_step}")
                control.should_save = True
                control.should_training_stop = True
            if not state.is_world_process_zero:
                return
            now = time.time()
            self.window.append((now, self.tokens_seen()))
            self.window = self.window[-20:]
            if len(self.window) >= 2 and self.window[-1][0] > self.window[0][0]:
                (ta, ka), (tb, kb) = self.window[0], self.window[-1]
                self.last_tps = (kb - ka) / (tb - ta)
            elif now > self.t0:
                self.last_tps = (self.tokens_seen() - self.tokens0) / (now - self.t0)
            done = state.global_step - self.step0
            eta = (now - self.t0) / done * (state.max_steps - state.global_step) if done > 0 else None
            update_run(
                self.run_id,
                step=state.global_step,
                epoch=float(state.epoch or 0.0),
                tokens_per_s=self.last_tps,
                eta_s=eta,
                heartbeat_at=utcnow(),
            )

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            if "train_runtime" in logs:  # the end-of-training summary, not a step
                return
            metric = RunMetric(
                run_id=self.run_id,
                step=state.global_step,
                epoch=float(logs.get("epoch", state.epoch or 0.0)),
                loss=_num(logs.get("loss")),
                eval_loss=_num(logs.get("eval_loss")),
                lr=_num(logs.get("learning_rate")),
                grad_norm=_num(logs.get("grad_norm")),
                tokens_per_s=self.last_tps,
                memory_bytes=_memory_bytes(),
                wall_time_s=time.time() - self.t0,
            )
            with db_session() as s:
                s.add(metric)
                run = s.get(Run, self.run_id)
                if metric.loss is not None:
                    run.last_loss = metric.loss
                s.add(run)
            parts = [f"step {state.global_step}/{state.max_steps}"]
            for key in ("loss", "eval_loss", "grad_norm", "learning_rate"):
                if key in logs:
                    parts.append(f"{key} {logs[key]:.4g}")
            if self.last_tps:
                parts.append(f"{self.last_tps:.0f} tok/s")
            log("  ".join(parts))

    return _MetricsCallback


def MetricsCallback(run_id, stop_flag, tokens_seen):  # noqa: N802 - a factory that reads like a class
    return make_metrics_callback_class()(run_id, stop_flag, tokens_seen)


def _num(v):
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    if not ckpts:
        return None
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1]))


def run_worker(run_id: int) -> int:
    settings = get_settings()
    apply_process_limits()
    run_dir = settings.runs_dir / str(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    is_main = int(os.environ.get("RANK", "0")) == 0

    stop_flag = threading.Event()

    def on_term(signum, frame):
        log("SIGTERM received: will checkpoint and stop after the current step")
        stop_flag.set()

    signal.signal(signal.SIGTERM, on_term)

    with db_session() as s:
        run = s.get(Run, run_id)
        if run is None:
            log(f"run {run_id} not found in the database")
            return 2
        config = TrainConfig.model_validate(run.config)
        resume_from = run.resume_from_checkpoint
        if is_main:
            run.status = RunStatus.running.value
            run.pid = run.pid or os.getpid()
            run.worker_host = socket.gethostname()
            run.started_at = run.started_at or utcnow()
            run.heartbeat_at = utcnow()
            run.output_dir = str(run_dir)
            s.add(run)
    (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    heartbeat = Heartbeat(run_id)
    if is_main:
        heartbeat.start()
    log(f"run {run_id} '{config.name}' starting (pid {os.getpid()})")

    status, error = RunStatus.failed, None
    final: dict = {}
    try:
        trainer, tokenizer, counts = build_trainer(run_id, config, run_dir, stop_flag)
        if resume_from:
            if is_main:
                _drop_metrics_after(run_id, _checkpoint_step(resume_from))
            log(f"resuming from {resume_from}")
        if stop_flag.is_set():
            raise StopRequested()
        result = trainer.train(resume_from_checkpoint=resume_from or None)
        final = {k: _num(v) for k, v in result.metrics.items() if _num(v) is not None}
        final.update({"dataset_" + k: v for k, v in counts.items()})
        final["global_step"] = trainer.state.global_step
        out_name = "model" if config.method == "full" else "adapter"
        out_dir = run_dir / out_name
        if is_main:
            trainer.save_model(str(out_dir))
            tokenizer.save_pretrained(str(out_dir))
            (out_dir / "train_config.yaml").write_text(config.to_yaml(), encoding="utf-8")
        status = RunStatus.stopped if stop_flag.is_set() else RunStatus.succeeded
        if is_main:
            update_run(run_id, adapter_path=str(out_dir))
        log(f"run {run_id} {status.value}: {final}")
    except StopRequested:
        status = RunStatus.stopped
        log("stopped before training started")
    except BaseException as exc:  # noqa: BLE001 - every way out is recorded
        status, error = RunStatus.failed, friendly_error(exc)
        traceback.print_exc()
        log(f"run {run_id} failed: {error}")
    finally:
        heartbeat.stop_event.set()
        if is_main:
            ckpt = latest_checkpoint(run_dir)
            try:
                update_run(
                    run_id,
                    status=status.value,
                    error=error,
                    finished_at=utcnow(),
                    final_metrics=final,
                    eta_s=0.0 if status == RunStatus.succeeded else None,
                    resume_from_checkpoint=str(ckpt) if ckpt and status != RunStatus.succeeded else None,
                    stop_requested=False,
                )
            except Exception:
                traceback.print_exc()
            try:  # hand the device to the next queued run
                from core.jobs import dispatch

                dispatch(exclude_run_id=run_id)
            except Exception:
                traceback.print_exc()
    return 0 if status in (RunStatus.succeeded, RunStatus.stopped) else 1


def _checkpoint_step(path: str) -> int:
    try:
        return int(Path(path).name.split("-")[-1])
    except ValueError:
        return 0


def _drop_metrics_after(run_id: int, step: int) -> None:
    """On resume, metrics logged after the checkpoint are replaced by the re-run steps."""
    from sqlmodel import delete

    with db_session() as s:
        s.exec(delete(RunMetric).where(RunMetric.run_id == run_id, RunMetric.step > step))


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter, not run news
    parser = argparse.ArgumentParser(prog="python -m core.train.worker")
    parser.add_argument("--run-id", type=int, required=True)
    args = parser.parse_args(argv)
    return run_worker(args.run_id)


if __name__ == "__main__":
    sys.exit(main())
