"""Runnable recipes: a model id + method + settings that fill the Train tab (and ``core train --recipe``).

The seeds' two guides fine-tune base models: GPT-2 with LoRA, and Mistral-7B base with QLoRA on a 16 GB T4. A recipe
knows what it needs (the weights, a CUDA GPU) and :func:`recipe_needs` says, before anything starts, what this machine
lacks — a recipe is never a run that fails at step 0 for a reason known at submit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    label: str
    base_model: str
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    needs_cuda: bool = False
    weights_gb: float = 0.0  # download size of the weights, for the message
    note: str = ""


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("gpt2-lora", "GPT-2 fine-tune (LoRA, Alpaca-style prompts)", "openai-community/gpt2",
           {"method": "lora", "chat_template": "alpaca", "lora_r": 16, "lora_alpha": 32,
            "lora_target_modules": ["all-linear"], "learning_rate": 2e-4, "batch_size": 8, "max_length": 512,
            "num_epochs": 3.0, "max_steps": -1, "precision": "auto"},
           weights_gb=0.55,
           note="GPT-2 (124M) is a base model: the Alpaca-style template adds no tokens; LoRA 'all-linear' covers its "
                "Conv1D layers c_attn, c_proj and c_fc. Runs on a CPU (slowly) or any GPU."),
    Recipe("mistral7b-qlora-t4", "Mistral-7B QLoRA on a T4 (16 GB)", "mistralai/Mistral-7B-v0.1",
           {"method": "qlora", "chat_template": "mistral", "lora_r": 16, "lora_alpha": 32,
            "lora_target_modules": ["all-linear"], "learning_rate": 2e-4, "batch_size": 1, "grad_accum": 8,
            "max_length": 1024, "num_epochs": 1.0, "max_steps": -1, "precision": "auto",
            "gradient_checkpointing": True},
           needs_cuda=True, weights_gb=14.5,
           note="Mistral-7B-v0.1 is a base model: the [INST] template adds no tokens (its tokenizer has </s>). 4-bit "
                "NF4 base + LoRA, batch 1 × 8 accumulation, gradient checkpointing: fits a T4's 16 GB (fp16)."),
)}


def recipe_menu() -> list[tuple[str, str]]:
    return [(r.label, r.name) for r in RECIPES.values()]


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe '{name}'; recipes: {', '.join(RECIPES)}") from None


def weights_available(ref: str) -> bool | None:
    """True when the model's weights are on this machine (a local folder or the Hub cache), False when they are
    not, None when that cannot be told."""
    from core.models import ModelNotFoundError, resolve_model

    try:
        resolved = resolve_model(ref, prepare_default=False)
    except ModelNotFoundError:
        return False
    if resolved.is_local or resolved.kind == "default":
        return True
    try:
        from huggingface_hub import scan_cache_dir
    except ImportError:  # pragma: no cover
        return None
    try:
        for repo in scan_cache_dir().repos:
            if repo.repo_id == resolved.ref and repo.repo_type == "model":
                return any(f.file_name.endswith(".safetensors") for rev in repo.revisions for f in rev.files)
    except Exception:  # noqa: BLE001 - no cache directory yet
        return False
    return False


def recipe_needs(recipe: Recipe) -> list[str]:
    """What this machine lacks to run the recipe, one sentence each (empty: it can run here)."""
    out = []
    if recipe.needs_cuda:
        import torch

        if not torch.cuda.is_available():
            out.append(f"a CUDA GPU ({recipe.settings.get('method', '').upper() or 'this recipe'} needs bitsandbytes "
                       "on CUDA; this machine has none) — run it on a GPU host (a T4 or larger)")
    if not weights_available(recipe.base_model):
        out.append(f"the weights of {recipe.base_model} (about {recipe.weights_gb:g} GB, downloaded from the Hugging "
                   "Face Hub on first use — needs network access, or put the model folder here and use its path)")
    return out
