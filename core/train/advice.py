"""What to change when a training run runs out of memory: the Estimate tab's advice for that run's config."""
from __future__ import annotations

GENERIC_OOM_ADVICE = ("Lower batch_size (raise grad_accum to keep the effective batch), lower max_length, enable "
                      "gradient_checkpointing or use QLoRA.")


def out_of_memory_advice(config: dict, capacity_bytes: int | None = None) -> str:
    """The estimator's figure for this run and the changes that make it fit ``capacity_bytes``, then the generic
    advice. Never raises: an estimate problem leaves the generic advice."""
    try:
        from core.estimate import GIB, estimate_training_memory, load_model_spec, plan_for_config, suggest_changes
        from core.train.config import TrainConfig

        cfg = TrainConfig.model_validate(config)
        plan = plan_for_config(cfg)
        spec = load_model_spec(cfg.base_model)
        peak = estimate_training_memory(spec, plan).peak_bytes
        text = f"The Estimate tab puts this run's peak at {peak / GIB:.1f} GB"
        if capacity_bytes:
            fixes = [f for f in suggest_changes(spec, plan, capacity_bytes)[:3] if not f.startswith("does not fit")]
            if fixes:
                text += f"; to fit {capacity_bytes / GIB:.1f} GB: " + "; or ".join(fixes)
        return f"{text}. {GENERIC_OOM_ADVICE}"
    except Exception:  # noqa: BLE001
        return GENERIC_OOM_ADVICE
