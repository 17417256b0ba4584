"""Memory, time and cost estimates for fine-tuning and serving a causal LM — from a model's *config*, never its weights.

Split by what each part depends on:

    spec      ModelSpec from a config, every parameter tensor, exact counts          pure (no torch, no database)
    memory    training memory by phase (components → phases → peak), inference       pure
    gpus      GPU fit table with what to change, time and cost                       pure
    lookup    catalog / local folder / Hub config → ModelSpec; dataset token counts   core.models, the database
    device    the training worker's device and its free memory                       torch, psutil (lazily)
    report    one report for UI and CLI, the Train tab's pre-flight check, the CLI
    serving   TGI / vLLM token limits on a GPU (core.deploy's plans)              a model folder's config.json
              (imported as ``core.estimate.serving``)

Everything public is importable from ``core.estimate`` as before.
"""
from core.estimate.device import worker_device
from core.estimate.gpus import (
    DEFAULT_MFU,
    FIT_MARGIN,
    GPUS,
    Gpu,
    GpuFit,
    TimeCost,
    estimate_time_cost,
    flops_multiplier,
    get_gpu,
    gpu_fit_table,
    suggest_changes,
)
from core.estimate.lookup import (
    CATALOG_PATH,
    catalog_entry,
    catalog_names,
    dataset_token_count,
    list_datasets_with_tokens,
    load_model_spec,
)
from core.estimate.memory import (
    ALLOCATOR_SLACK_FRACTION,
    ATTENTIONS,
    BNB_8BIT_OPTIM_BLOCK,
    BNB_8BIT_OPTIM_MIN_SIZE,
    CUDA_CONTEXT_BYTES,
    DISTRIBUTED,
    DTYPE_BYTES,
    INFERENCE_DTYPES,
    METHOD_LABELS,
    METHODS,
    NF4_BLOCK,
    NF4_DQ_BLOCK,
    OPTIMIZER_LABELS,
    OPTIMIZERS,
    PRECISIONS,
    STEP_PHASES,
    Component,
    MemoryEstimate,
    TrainingPlan,
    accelerate_style,
    estimate_inference_memory,
    estimate_training_memory,
    per_device_note,
    per_device_peak_bytes,
    phase_totals,
    resolve_precision,
)
from core.estimate.report import (
    PreflightResult,
    estimate_report,
    plan_for_config,
    preflight_check,
    register_cli,
    run_cli,
)
from core.estimate.spec import (
    GIB,
    LLAMA_LIKE,
    MIB,
    SUPPORTED_FAMILIES,
    EstimateError,
    ModelSpec,
    ParamCounts,
    ParamTensor,
    count_lora_parameters,
    count_parameters,
    param_inventory,
    spec_from_config,
)

__all__ = [
    "ALLOCATOR_SLACK_FRACTION", "ATTENTIONS", "BNB_8BIT_OPTIM_BLOCK", "BNB_8BIT_OPTIM_MIN_SIZE", "CATALOG_PATH",
    "CUDA_CONTEXT_BYTES", "DEFAULT_MFU", "DISTRIBUTED", "DTYPE_BYTES", "FIT_MARGIN", "GIB", "GPUS", "INFERENCE_DTYPES",
    "LLAMA_LIKE", "METHODS", "METHOD_LABELS", "MIB", "NF4_BLOCK", "NF4_DQ_BLOCK", "OPTIMIZERS", "OPTIMIZER_LABELS",
    "PRECISIONS", "STEP_PHASES", "SUPPORTED_FAMILIES", "Component", "EstimateError", "Gpu", "GpuFit", "MemoryEstimate",
    "ModelSpec", "ParamCounts", "ParamTensor", "PreflightResult", "TimeCost", "TrainingPlan", "accelerate_style",
    "catalog_entry", "catalog_names", "count_lora_parameters", "count_parameters", "dataset_token_count",
    "estimate_inference_memory", "estimate_report", "estimate_time_cost", "estimate_training_memory",
    "flops_multiplier", "get_gpu", "gpu_fit_table", "list_datasets_with_tokens", "load_model_spec", "param_inventory",
    "per_device_note", "per_device_peak_bytes", "phase_totals", "plan_for_config", "preflight_check", "register_cli",
    "resolve_precision", "run_cli", "spec_from_config", "suggest_changes", "worker_device",
]
