"""The base model as a run trains it: precision, 4-bit for QLoRA, a grown vocabulary for a new chat template, the
LoRA adapter (new or continued). Heavy imports happen inside, in the worker only.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.runs.worker import log
from core.train.config import TrainConfig


def load_model(config: TrainConfig, plan, setup, resolved, tokenizer, applied, base_had_template: bool):
    """The base model as the run trains it: precision, 4-bit for QLoRA, a grown vocabulary for a new template, the
    LoRA adapter (new or continued). Returns (model, trained token ids, vocabulary rows)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    from core.train.device import qlora_support_error
    from core.train.setup import effective_setup

    # the run's seed decides the new weights (LoRA's A matrices, grown embedding rows): the same in every run with
    # that seed, and on every rank of a multi-process run (FSDP shards each rank's own copy: they must agree)
    set_seed(config.seed)
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
