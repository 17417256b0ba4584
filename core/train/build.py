"""From a run's TrainConfig to a ready trainer: rows, template, tokenisation, eval split, the model, the collator and
TRL's SFTTrainer (SFT / preference objectives) or GRPOTrainer (GRPO), with the studio's checkpoints and metrics.
Heavy imports happen inside, in the worker only.
"""
from __future__ import annotations

from core.runs import paths
from core.runs.worker import JobContext, log
from core.train.callbacks import make_metrics_callback
from core.train.checkpoints import checkpoint_mixin, checkpoint_mixin_on
from core.train.config import TrainConfig
from core.train.distributed import FsdpOnCpu
from core.train.limits import cap_memory
from core.train.model import load_model


def build_trainer(ctx: JobContext, config: TrainConfig, report=None):
    """Everything from config to a ready trainer (SFT / preference; GRPO through build_grpo_trainer). Heavy imports
    happen here, in the worker only. ``report``: the run's trackers (core.train.trackers), fed by the callback."""
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
        return build_grpo_trainer(ctx, config, plan, setup, resolved, tokenizer, applied, base_had_template, rows,
                                  report=report)

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
        needed = config.max_steps * config.batch_size * config.grad_accum * max(1, config.num_processes)
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
    layers = None
    if config.distributed == "fsdp":
        from core.train.distributed import decoder_layer_classes

        layers = decoder_layer_classes(model)
        log(f"FSDP2 over {config.num_processes} processes: full shard, wrapped by {', '.join(layers) or 'none'}, "
            "sharded checkpoints")
    args = SFTConfig(**trainer_arguments(config, plan, output_dir=str(ckpt_dir), has_eval=bool(eval_examples),
                                         fsdp_layers=layers))

    train_ds = HFDataset.from_list(examples)
    eval_ds = HFDataset.from_list(eval_examples) if eval_examples else None
    keep = config.save_total_limit

    class StudioTrainer(checkpoint_mixin(ctx, resolved, keep), FsdpOnCpu, SFTTrainer):
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
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                # the count is every rank's and DDP / FSDP average the gradients over the ranks: as the Trainer's
                # own compute_loss, scale back so a step's gradient is that of the global batch
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if StudioTrainer.preference_stats and "loss" in logs:  # this step's rewards, margins, accuracy
                for k, vals in StudioTrainer.preference_stats.items():
                    logs[k] = sum(vals) / len(vals)
                StudioTrainer.preference_stats = {}
            return super().log(logs, *args, **kwargs)

    callback = make_metrics_callback(ctx, lambda: StudioTrainer.tokens_seen, report=report)
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
                       base_had_template: bool, rows: list[dict], report=None):
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
        needed = config.max_steps * config.batch_size * config.grad_accum * max(1, config.num_processes)
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
    callback = make_metrics_callback(ctx, lambda: trainer_cls.tokens_seen, samples=lambda: trainer_cls.samples,
                                     report=report)
    cap_memory()
    trainer = trainer_cls(model=model, reward_funcs=reward_set.functions(), args=args,
                          train_dataset=HFDataset.from_list(prompts), processing_class=tokenizer, callbacks=[callback])
    finish_trainer(trainer, config, plan, applied, trained_ids, vocab_rows)
    return trainer, tokenizer, counts
