"""The training kind's entry point: one run, in its own worker process (``core.runs.worker``).

``run_job(ctx)`` reads the run's TrainConfig, trains with TRL's SFTTrainer + PEFT, reports progress and metrics
through the runs store as it goes, saves checkpoints (with optimizer state) and the final adapter under
``workspace/runs/<id>/``, and returns how it ended; recording the ending is the runs core's job. SIGTERM (via
``ctx.should_stop()``) means: checkpoint after the current step, then stop.

Checkpoints are complete or absent: each is written under ``checkpoints/.staging/``, marked complete, and renamed
into place; a save that fails (a full disk) leaves nothing half-written, and the previous checkpoint stays usable.
For more than one GPU the same worker runs under ``accelerate launch`` (core.runs.kinds); only rank 0 writes.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

from core.runs import paths
from core.runs.errors import DiskFullError, disk_full_message, is_disk_full
from core.runs.paths import save_atomically
from core.runs.worker import JobContext, JobResult, StopRequested, log
from core.train.config import TrainConfig
from storage import RunStatus


def apply_process_limits() -> None:
    """Be a good neighbour of the dashboard on the same machine: lower priority, optional thread cap."""
    from core.config import get_settings

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
    from core.config import get_settings

    cap = get_settings().worker_max_memory_bytes
    if not cap:
        return
    import resource

    import psutil

    limit = psutil.Process().memory_info().vms + cap
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    log(f"memory cap: {cap / 1024**3:.2f} GB above the loaded libraries")


def build_trainer(ctx: JobContext, config: TrainConfig):
    """Everything from config to a ready trainer (SFT / preference; GRPO through build_grpo_trainer). Heavy imports
    happen here, in the worker only."""
    from datasets import Dataset as HFDataset
    from trl import SFTConfig, SFTTrainer

    from core.data import load_training_rows
    from core.data.formats import PREFERENCE_OBJECTIVES
    from core.models import load_tokenizer, resolve_model
    from core.train.device import pick_precision
    from core.train.setup import effective_setup, trainer_arguments
    from core.train.tokenize import PaddingFreeCollator, count_real_tokens, labelled_positions_loss, tokenize_rows

    preference = config.objective in PREFERENCE_OBJECTIVES
    plan = pick_precision(config.precision)
    setup = effective_setup(config, plan)
    resolved = resolve_model(config.base_model)
    tokenizer = load_tokenizer(resolved)
    base_had_template = bool(getattr(tokenizer, "chat_template", None))
    applied = None
    rows = load_training_rows(config.dataset, split="train", objective=config.objective)
    if config.chat_template:
        from core.data.templates import apply_template, check_renders

        applied = apply_template(tokenizer, config.chat_template)
        check_renders(tokenizer)
        log(applied.summary())
    elif not base_had_template and any("messages" in r or "chosen" in r for r in rows):
        from core.data.templates import CHOICE_HELP

        raise ValueError(f"the base model {resolved.display_name} has no chat template, so its conversations cannot "
                         f"be turned into training text: set chat_template ({CHOICE_HELP})")
    if config.objective == "grpo":
        return build_grpo_trainer(ctx, config, plan, setup, resolved, tokenizer, applied, base_had_template, rows)

    def tokenize(rows_):
        if preference:
            from core.train.preference import tokenize_pairs

            return tokenize_pairs(tokenizer, rows_, config.max_length, keep_identical=config.keep_identical_pairs)
        return tokenize_rows(tokenizer, rows_, config.max_length)

    examples, counts = tokenize(rows)
    log(f"dataset: {counts}")
    if preference and counts["identical"]:
        log(f"{counts['identical']} pair(s) with the same chosen and rejected answer "
            + ("kept (keep_identical_pairs)" if config.keep_identical_pairs else "dropped: they teach nothing"))
    if not examples:
        raise ValueError("no training examples left after tokenisation (every row lost its assistant tokens)"
                         if not preference else "no preference pairs left after tokenisation (identical answers "
                         "dropped, or max_length leaves no answer token)")
    eval_examples = None
    if config.eval_split > 0:
        import random

        rnd = random.Random(config.seed)  # noqa: S311 - a seeded data order
        rnd.shuffle(examples)
        n_eval = max(1, int(len(examples) * config.eval_split))
        eval_examples, examples = examples[:n_eval], examples[n_eval:]
    elif config.eval_steps > 0:  # the dataset's own validation split, only when it will be evaluated
        try:
            val_rows = load_training_rows(config.dataset, split="validation")
        except Exception:  # noqa: BLE001
            val_rows = []
        if val_rows:
            eval_examples, _ = tokenize(val_rows)
    if config.objective == "dpo" and config.max_steps > 0:
        # the reference pass costs a forward per pair: only for the pairs the run will see (a seeded sample)
        needed = config.max_steps * config.batch_size * config.grad_accum * max(1, config.num_gpus)
        if needed < len(examples):
            import random

            random.Random(config.seed).shuffle(examples)  # noqa: S311 - a seeded data order
            examples = examples[:needed]
            log(f"{config.max_steps} steps see {needed} pairs: training on a seeded sample of that many")

    model, trained_ids, vocab_rows = load_model(config, plan, setup, resolved, tokenizer, applied,
                                                base_had_template)

    if preference:
        from core.train.preference import PairCollator

        collator = PairCollator(pad_token_id=tokenizer.pad_token_id, padding_free=config.packing)
    else:
        collator = PaddingFreeCollator(pad_token_id=tokenizer.pad_token_id, padding_free=config.packing)
    if config.objective == "dpo":
        from core.train.preference import examples_fingerprint, load_or_compute_reference

        if plan.device == "cuda" and config.method != "qlora":
            model.to("cuda")
        everything = examples + (eval_examples or [])
        load_or_compute_reference(ctx.dir, model, everything, collator, examples_fingerprint(everything), log=log)

    ckpt_dir = paths.checkpoints_dir(ctx.dir)
    args = SFTConfig(**trainer_arguments(config, plan, output_dir=str(ckpt_dir), has_eval=bool(eval_examples)))

    train_ds = HFDataset.from_list(examples)
    eval_ds = HFDataset.from_list(eval_examples) if eval_examples else None
    keep = config.save_total_limit

    class StudioTrainer(checkpoint_mixin(ctx, resolved, keep), SFTTrainer):
        """SFTTrainer whose loss projects through the LM head only where a label exists (no wasted work), and
        whose checkpoints appear only when complete."""

        tokens_seen = 0
        preference_stats: dict[str, list[float]] = {}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                StudioTrainer.tokens_seen += count_real_tokens(inputs)
            if preference:
                from core.train.preference import preference_loss, sequence_logps

                logps, n_tokens = sequence_logps(model, inputs)
                loss, stats = preference_loss(config.objective, config.preference_loss, config.beta, logps,
                                              n_tokens, inputs.get("ref_logps"))
                if model.training:
                    for k, v in stats.items():
                        StudioTrainer.preference_stats.setdefault(k, []).append(v)
                return (loss, None) if return_outputs else loss
            loss, outputs = labelled_positions_loss(model, inputs, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if StudioTrainer.preference_stats and "loss" in logs:  # this step's rewards, margins, accuracy
                for k, vals in StudioTrainer.preference_stats.items():
                    logs[k] = sum(vals) / len(vals)
                StudioTrainer.preference_stats = {}
            return super().log(logs, *args, **kwargs)

    callback = make_metrics_callback(ctx, lambda: StudioTrainer.tokens_seen)
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
    finish_trainer(trainer, config, plan, applied, trained_ids, vocab_rows)
    return trainer, tokenizer, counts


def checkpoint_mixin(ctx: JobContext, resolved, keep: int):
    """A trainer mixin: checkpoints appear only when complete (written aside, then renamed into place, with the disk
    checked first), and only the newest ``keep`` stay. Shared by the SFT / preference and the GRPO trainers."""

    class StudioCheckpoints:
        last_checkpoint_bytes: int | None = None

        def checkpoint_bytes_needed(self) -> int:
            """Size of the last checkpoint, or the estimate: trainable weights + Adam's two fp32 states (+ the
            frozen weights for a full fine-tune) + the tokenizer files."""
            if self.last_checkpoint_bytes:
                return self.last_checkpoint_bytes
            params = [p for p in self.model.parameters() if p.requires_grad]
            weights = sum(p.numel() * p.element_size() for p in params)
            states = sum(p.numel() * 8 for p in params)
            tok = sum(f.stat().st_size for f in Path(resolved.path).glob("*token*") if f.is_file()) \
                if resolved.is_local else 5_000_000
            return int(weights + states + tok + 1_000_000)

        def _save_checkpoint(self, model, trial):
            root = Path(self.args.output_dir)
            name = f"{paths.CHECKPOINT_PREFIX}{self.state.global_step}"
            staging = paths.staging_dir(ctx.dir)
            parent = super()

            def write(tmp: Path) -> None:
                real_output_dir = self.args.output_dir
                self.args.output_dir = str(staging)  # HF writes <output_dir>/checkpoint-N = our temporary folder
                try:
                    parent._save_checkpoint(model, trial)
                finally:
                    self.args.output_dir = real_output_dir
                    (staging / "README.md").unlink(missing_ok=True)  # TRL's model card, written beside it

            save_atomically(root / name, write, needed_bytes=self.checkpoint_bytes_needed(),
                            what="a checkpoint of this run", tmp=staging / name)
            self.last_checkpoint_bytes = paths.dir_size_bytes(root / name)
            if keep:
                for old in paths.complete_checkpoints(ctx.dir)[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)

    return StudioCheckpoints


def finish_trainer(trainer, config: TrainConfig, plan, applied, trained_ids, vocab_rows) -> None:
    """What every trainer gets after it is built: no per-step printing (our callback logs a line), fp32 QLoRA
    adapters on a CPU, the template facts the final save writes."""
    import torch
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
    trainer.studio_template = (applied, trained_ids, vocab_rows)


def build_grpo_trainer(ctx: JobContext, config: TrainConfig, plan, setup, resolved, tokenizer, applied,
                       base_had_template: bool, rows: list[dict]):
    """GRPO: prompts from the dataset's conversations, the run's rewards, TRL's GRPOTrainer with the studio's
    checkpoints and metrics."""
    from datasets import Dataset as HFDataset
    from trl import GRPOConfig, GRPOTrainer

    from core.train.grpo import grpo_arguments, make_grpo_trainer_class
    from core.train.rewards import RewardSet, check_references, prompt_rows
    from core.train.setup import trainer_arguments

    prompts = prompt_rows(rows)
    if not prompts:
        raise ValueError(f"dataset {config.dataset} has no prompts for GRPO: it needs conversations (a user turn, "
                         "optionally the answer the rewards compare with)")
    check_references(config.rewards, [p["reference"] for p in prompts], f"dataset {config.dataset}")
    if any(p["reference"] is None for p in prompts):
        for p in prompts:
            p["reference"] = p["reference"] or ""
    counts = {"prompts": len(prompts), "with_reference": sum(1 for p in prompts if p["reference"])}
    log(f"dataset: {counts}; rewards {', '.join(config.rewards)}; {config.num_generations} answers per prompt, "
        f"at most {config.max_completion_length} new tokens, temperature {config.temperature:g}, "
        f"KL beta {config.beta:g}")
    if config.max_steps > 0:
        needed = config.max_steps * config.batch_size * config.grad_accum * max(1, config.num_gpus)
        log(f"{config.max_steps} steps answer {needed} prompts ({needed * config.num_generations} answers)")
    model, trained_ids, vocab_rows = load_model(config, plan, setup, resolved, tokenizer, applied, base_had_template)
    model.config.use_cache = True  # sampling reuses the KV cache; the training forward passes ask for none
    if config.beta > 0 and hasattr(model, "peft_config"):
        # TRL keeps a frozen copy of the adapter named 'ref' as the KL reference: the saved adapter is the trained one
        import functools

        model.save_pretrained = functools.partial(model.save_pretrained, selected_adapters=["default"])
    reward_set = RewardSet(config.rewards, regex=config.reward_regex, length_min=config.length_min,
                           length_max=config.length_max, log=log)
    ckpt_dir = paths.checkpoints_dir(ctx.dir)
    base_args = trainer_arguments(config, plan, output_dir=str(ckpt_dir), has_eval=False)
    args = GRPOConfig(**grpo_arguments(base_args, config))
    trainer_cls = make_grpo_trainer_class(checkpoint_mixin_on(GRPOTrainer, ctx, resolved, config.save_total_limit),
                                          reward_set)
    callback = make_metrics_callback(ctx, lambda: trainer_cls.tokens_seen, samples=lambda: trainer_cls.samples)
    cap_memory()
    trainer = trainer_cls(model=model, reward_funcs=reward_set.functions(), args=args,
                          train_dataset=HFDataset.from_list(prompts), processing_class=tokenizer, callbacks=[callback])
    finish_trainer(trainer, config, plan, applied, trained_ids, vocab_rows)
    return trainer, tokenizer, counts


def checkpoint_mixin_on(base_cls, ctx: JobContext, resolved, keep: int):
    return type(f"Studio{base_cls.__name__}", (checkpoint_mixin(ctx, resolved, keep), base_cls), {})


def load_model(config: TrainConfig, plan, setup, resolved, tokenizer, applied, base_had_template: bool):
    """The base model as the run trains it: precision, 4-bit for QLoRA, a grown vocabulary for a new template, the
    LoRA adapter (new or continued). Returns (model, trained token ids, vocabulary rows)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.train.device import qlora_support_error
    from core.train.setup import effective_setup

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[plan.precision]
    load_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[setup.load_dtype]
    if config.packing:
        from core.train.attention import register as register_packed_attention

        register_packed_attention()
    from core.models import load_kwargs

    model_kwargs: dict = {"dtype": load_dtype, "attn_implementation": setup.attention, **load_kwargs()}
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
    trained_ids: list[int] = []
    if applied is not None:
        from core.data.templates import grow_vocab

        grow_vocab(model, len(tokenizer))
        # rows that need training: tokens new to this vocabulary, and the template's tokens when the base model
        # never used a chat template (Llama-3 base has <|eot_id|> in its vocabulary, untrained)
        wanted = applied.new_tokens + ([] if base_had_template else applied.template_tokens)
        trained_ids = sorted({int(tokenizer.convert_tokens_to_ids(t)) for t in wanted})
        eos_id = tokenizer.eos_token_id
        model.config.eos_token_id = eos_id
        if model.generation_config is not None:
            model.generation_config.eos_token_id = eos_id
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    vocab_rows = int(model.get_input_embeddings().weight.shape[0])
    setup = effective_setup(config, plan, trained_token_rows=len(trained_ids))
    log(setup.line())

    if config.method in ("lora", "qlora"):
        # QLoRA: no prepare_model_for_kbit_training — its fp32 upcast of embeddings/lm_head costs memory the
        # estimator (and QLoRA's point) does not budget; non-reentrant checkpointing needs no input gradients.
        if config.init_adapter:
            log(f"continuing from adapter {config.init_adapter}")
            from core.models import check_safe_to_load

            if Path(config.init_adapter).is_dir():
                check_safe_to_load(Path(config.init_adapter))  # safetensors only, as for every model folder
            model = PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
        else:
            targets = config.lora_target_modules
            token_rows = None
            if trained_ids:
                from core.data.templates import embedding_module_names

                emb_name, head_name, tied = embedding_module_names(model)
                token_rows = {emb_name.rsplit(".", 1)[-1]: trained_ids}
                if head_name and not tied:  # an untied LM head must learn to emit the new tokens too
                    token_rows[head_name.rsplit(".", 1)[-1]] = trained_ids
            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules="all-linear" if targets == ["all-linear"] else targets,
                task_type="CAUSAL_LM",
                trainable_token_indices=token_rows,
            )
            model = get_peft_model(model, lora)
        if trained_ids:
            # the new rows' trained values are in the adapter (trainable tokens); the grown embedding matrix itself
            # is the base's plus mean rows, which every loader recreates — PEFT would otherwise save it whole
            import functools

            model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"trainable params {trainable:,} of {total:,}")

    return model, trained_ids, vocab_rows


def checkpointed_modules(model) -> int:
    """How many modules of the model have activation (gradient) checkpointing switched on."""
    return sum(1 for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True)


def _memory_bytes() -> int | None:
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001
        return None


def _num(v):
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def make_metrics_callback(ctx: JobContext, tokens_seen, samples=None):
    """``tokens_seen()``: tokens trained on so far; ``samples()``: a GRPO run's latest sample answers."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Reports progress through the runs store as it happens and turns a stop request into
        checkpoint-then-stop."""

        def __init__(self):
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
            self.tokens0 = tokens_seen()
            ctx.progress(max_steps=state.max_steps, step=state.global_step)
            n_ckpt = checkpointed_modules(kw["model"]) if kw.get("model") is not None else 0
            if args.activation_checkpointing and n_ckpt == 0:
                raise RuntimeError("gradient checkpointing was asked for but the model did not switch it on")
            log(f"training: {state.max_steps} steps (starting at {state.global_step})"
                + (f"; gradient checkpointing active in {n_ckpt} modules" if n_ckpt else ""))

        def on_step_end(self, args, state, control, **kw):
            if ctx.should_stop():
                log(f"stop requested: saving checkpoint at step {state.global_step}")
                control.should_save = True
                control.should_training_stop = True
            if not state.is_world_process_zero:
                return
            now = time.time()
            self.window.append((now, tokens_seen()))
            self.window = self.window[-20:]
            if len(self.window) >= 2 and self.window[-1][0] > self.window[0][0]:
                (ta, ka), (tb, kb) = self.window[0], self.window[-1]
                self.last_tps = (kb - ka) / (tb - ta)
            elif now > self.t0:
                self.last_tps = (tokens_seen() - self.tokens0) / (now - self.t0)
            done = state.global_step - self.step0
            eta = (now - self.t0) / done * (state.max_steps - state.global_step) if done > 0 else None
            ctx.progress(step=state.global_step, epoch=float(state.epoch or 0.0), tokens_per_s=self.last_tps,
                         eta_s=eta)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            if "train_runtime" in logs:  # the end-of-training summary, not a step
                return
            from core.train.grpo import GRPO_KEYS
            from core.train.preference import PREFERENCE_KEYS

            keys = [*PREFERENCE_KEYS, *GRPO_KEYS,
                    *(k for k in logs if k.startswith("rewards/") and k.endswith("/mean"))]  # GRPO: each reward
            extra = {k: _num(logs[k]) for k in keys if _num(logs.get(k)) is not None}
            extra["tokens_seen"] = int(tokens_seen())  # the x axis of runs compared by tokens
            if samples is not None and samples():
                extra["samples"] = samples()
            ctx.metric(step=state.global_step, epoch=float(logs.get("epoch", state.epoch or 0.0)),
                       loss=_num(logs.get("loss")), eval_loss=_num(logs.get("eval_loss")),
                       lr=_num(logs.get("learning_rate")), grad_norm=_num(logs.get("grad_norm")),
                       tokens_per_s=self.last_tps, memory_bytes=_memory_bytes(), wall_time_s=time.time() - self.t0,
                       extra=extra)
            parts = [f"step {state.global_step}/{state.max_steps}"]
            for key in ("loss", "eval_loss", "rewards/margins", "rewards/accuracies", "reward", "reward_std",
                        "completions/mean_length", "grad_norm", "learning_rate"):
                if key in logs:
                    parts.append(f"{key} {logs[key]:.4g}")
            if self.last_tps:
                parts.append(f"{self.last_tps:.0f} tok/s")
            log("  ".join(parts))

    return MetricsCallback()


def run_job(ctx: JobContext) -> JobResult:
    """The ``train`` kind: train, save the adapter (or full model), return how it ended."""
    apply_process_limits()
    config = TrainConfig.model_validate(ctx.config)
    removed = paths.remove_partial_checkpoints(ctx.dir)
    if removed:
        log("removed unfinished checkpoint folder(s): " + ", ".join(p.name for p in removed))
    resume_from = ctx.job.resume_from_checkpoint
    if resume_from and not paths.is_complete_checkpoint(Path(resume_from)):
        newest = paths.latest_checkpoint(ctx.dir)
        log(f"checkpoint {Path(resume_from).name} is incomplete; "
            + (f"using {newest.name} instead" if newest else "starting from the beginning"))
        resume_from = str(newest) if newest else None
    trainer = None
    try:
        trainer, tokenizer, counts = build_trainer(ctx, config)
        if resume_from:
            if ctx.is_main:
                from core.runs import store

                store.drop_metrics_after(ctx.job_id, paths.checkpoint_step(resume_from))
                seen = [m.extra["tokens_seen"] for m in store.metrics(ctx.job_id)
                        if (m.extra or {}).get("tokens_seen") is not None]
                if seen:  # the tokens-seen axis goes on from where the checkpoint left it
                    type(trainer).tokens_seen = int(seen[-1])
            log(f"resuming from {resume_from}")
        if ctx.should_stop():
            raise StopRequested()
        result = trainer.train(resume_from_checkpoint=resume_from or None)
        final = {k: _num(v) for k, v in result.metrics.items() if _num(v) is not None}
        final.update({"dataset_" + k: v for k, v in counts.items()})
        final["global_step"] = trainer.state.global_step
        out_dir = ctx.dir / ("model" if config.method == "full" else "adapter")
        if ctx.is_main:
            def write(tmp: Path) -> None:
                trainer.save_model(str(tmp))
                tokenizer.save_pretrained(str(tmp))
                applied, trained_ids, vocab_size = trainer.studio_template
                if applied is not None:
                    from core.data.templates import write_meta

                    write_meta(tmp, applied, trained_token_ids=trained_ids, vocab_size=vocab_size, tokenizer=tokenizer)
                (tmp / "train_config.yaml").write_text(config.to_yaml(), encoding="utf-8")

            save_atomically(out_dir, write, needed_bytes=trainer.checkpoint_bytes_needed(), what="the adapter")
        status = RunStatus.stopped if ctx.should_stop() else RunStatus.succeeded
        return JobResult(status=status, final_metrics=final, fields={"adapter_path": str(out_dir)},
                         summary=str(final))
    except BaseException as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            needed = trainer.checkpoint_bytes_needed() if trainer is not None else None
            raise DiskFullError(disk_full_message(paths.free_bytes(ctx.dir), needed)) from exc
        raise
