"""GPUs: which cards a plan fits (with what to change when it does not), and training time and cost. Pure."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Optional

from core.estimate.memory import MemoryEstimate, TrainingPlan, estimate_training_memory, resolve_precision
from core.estimate.spec import GIB, EstimateError, ModelSpec, count_parameters


@dataclass(frozen=True)
class Gpu:
    key: str
    name: str
    memory_gb: float  # marketing size
    usable_bytes: int  # what torch reports as total on the card
    tflops_16: float  # peak dense bf16/fp16 tensor TFLOPs
    tflops_32: float  # peak dense fp32 (TF32 where available) TFLOPs
    bf16: bool
    count: int = 1
    price_per_gpu_hour: float = 0.0  # on-demand USD (indicative; editable in the UI)
    instance: str = ""


GPUS: tuple[Gpu, ...] = (
    Gpu("t4", "NVIDIA T4 16 GB", 16, 15_828_320_256, 65, 8.1, False, 1, 0.53, "g4dn.xlarge"),
    Gpu("l4", "NVIDIA L4 24 GB", 24, 23_034_724_352, 121, 60, True, 1, 0.80, "g6.xlarge"),
    Gpu("a10g", "NVIDIA A10G 24 GB", 24, 23_609_475_072, 70, 35, True, 1, 1.01, "g5.xlarge"),
    Gpu("a100-40", "NVIDIA A100 40 GB", 40, 42_298_834_944, 312, 156, True, 1, 4.10, "p4d (per GPU)"),
    Gpu("a100-80", "NVIDIA A100 80 GB", 80, 85_051_572_224, 312, 156, True, 1, 5.12, "p4de (per GPU)"),
    Gpu("h100", "NVIDIA H100 80 GB", 80, 84_929_347_584, 989, 494, True, 1, 12.29, "p5 (per GPU)"),
    Gpu("h200", "NVIDIA H200 141 GB", 141, 150_754_820_096, 989, 494, True, 1, 13.0, "p5e (per GPU)"),
    Gpu("g4dn.12xlarge", "AWS g4dn.12xlarge (4× T4 16 GB)", 16, 15_828_320_256, 65, 8.1, False, 4, 0.98,
        "g4dn.12xlarge"),
    Gpu("p3.2xlarge", "AWS p3.2xlarge (1× V100 16 GB)", 16, 16_935_682_048, 125, 15.7, False, 1, 3.06, "p3.2xlarge"),
    Gpu("p3.8xlarge", "AWS p3.8xlarge (4× V100 16 GB)", 16, 16_935_682_048, 125, 15.7, False, 4, 3.06, "p3.8xlarge"),
    Gpu("p3.16xlarge", "AWS p3.16xlarge (8× V100 16 GB)", 16, 16_935_682_048, 125, 15.7, False, 8, 3.06, "p3.16xlarge"),
    Gpu("p4d.24xlarge", "AWS p4d.24xlarge (8× A100 40 GB)", 40, 42_298_834_944, 312, 156, True, 8, 4.10,
        "p4d.24xlarge"),
    Gpu("p5.48xlarge", "AWS p5.48xlarge (8× H100 80 GB)", 80, 84_929_347_584, 989, 494, True, 8, 12.29, "p5.48xlarge"),
)
FIT_MARGIN = 0.90  # under 90 % of the card: "fits"; 90-100 %: "tight"


def get_gpu(key: str) -> Gpu:
    for g in GPUS:
        if g.key == key or g.name == key:
            return g
    raise EstimateError(f"unknown GPU '{key}'; choose one of {', '.join(g.key for g in GPUS)}")


def _verdict(need: int, have: int) -> str:
    if need <= FIT_MARGIN * have:
        return "fits"
    if need <= have:
        return "tight"
    return "no"


def _plan_for_gpu(plan: TrainingPlan, gpu: Gpu, precision: str) -> TrainingPlan:
    p = precision if precision != "auto" else resolve_precision("auto", "cuda", gpu.bf16)
    if p == "bf16" and not gpu.bf16:
        p = "fp16"  # the worker falls back to fp16 where bf16 is unsupported
    return replace(plan, precision=p, device="cuda")


def _sharded_peak(est: MemoryEstimate, n: int) -> int:
    """FSDP/ZeRO-3 over n GPUs: weights, gradients and optimizer states are sharded; activations are not."""
    comp = est.component_bytes()
    shardable = sum(comp.get(k, 0) for k in ("weights", "adapter_weights", "optimizer_states", "gradients"))
    rest = est.peak_tensor_bytes - (shardable - comp.get("gradients", 0))  # peak phase usually has no full grads
    return int(shardable / n + max(rest, 0) + est.overhead_bytes)


def suggest_changes(spec: ModelSpec, plan: TrainingPlan, capacity_bytes: int) -> list[str]:
    """Single changes (then a few combinations) that bring the peak under the capacity, cheapest first."""
    options: list[tuple[str, TrainingPlan]] = []
    if not plan.gradient_checkpointing:
        options.append(("enable gradient checkpointing", replace(plan, gradient_checkpointing=True)))
    if plan.batch_size > 1:
        options.append((f"batch size 1 with gradient accumulation ×{plan.batch_size * plan.grad_accum}",
                        replace(plan, batch_size=1, grad_accum=plan.batch_size * plan.grad_accum)))
    if plan.method == "full":
        options.append(("use LoRA instead of full fine-tuning", replace(plan, method="lora")))
        if plan.optimizer == "adamw":
            options.append(("use 8-bit AdamW", replace(plan, optimizer="adamw_8bit")))
    if plan.method in ("full", "lora", "int8"):
        options.append(("use QLoRA (4-bit base weights)", replace(plan, method="qlora")))
    if plan.attention == "eager":
        options.append(("use sdpa/flash attention instead of eager", replace(plan, attention="sdpa")))
    found = []
    for label, p in options:
        try:
            if estimate_training_memory(spec, p).peak_bytes <= FIT_MARGIN * capacity_bytes:
                found.append(label)
        except EstimateError:
            continue
    if found:
        return found
    # combinations, greedily
    combo, labels = plan, []
    for label, _ in options:
        trial = {
            "enable gradient checkpointing": lambda q: replace(q, gradient_checkpointing=True),
            "use QLoRA (4-bit base weights)": lambda q: replace(q, method="qlora"),
            "use LoRA instead of full fine-tuning": lambda q: replace(q, method="lora") if q.method == "full" else q,
            "use sdpa/flash attention instead of eager": lambda q: replace(q, attention="sdpa"),
        }.get(label)
        if label.startswith("batch size 1"):
            trial = lambda q: replace(q, batch_size=1, grad_accum=q.batch_size * q.grad_accum)
        if label == "use 8-bit AdamW":
            trial = lambda q: replace(q, optimizer="adamw_8bit")
        if trial is None:
            continue
        combo = trial(combo)
        labels.append(label)
        if estimate_training_memory(spec, combo).peak_bytes <= FIT_MARGIN * capacity_bytes:
            return [" + ".join(labels)]
    shorter = replace(combo, seq_len=max(8, plan.seq_len // 2))
    if estimate_training_memory(spec, shorter).peak_bytes <= FIT_MARGIN * capacity_bytes:
        return [" + ".join(labels + [f"sequence length {shorter.seq_len}"])]
    return ["does not fit even with checkpointing, QLoRA and batch size 1: shard over more GPUs (FSDP/ZeRO-3)"]


@dataclass
class GpuFit:
    gpu: str
    name: str
    gpus: int
    memory_gb: float
    precision: str
    peak_bytes: int
    verdict: str  # fits | tight | no
    sharded_peak_bytes: Optional[int]  # per GPU under FSDP/ZeRO-3 (multi-GPU instances)
    sharded_verdict: Optional[str]
    advice: str

    def as_dict(self) -> dict:
        return asdict(self)


def gpu_fit_table(spec: ModelSpec, plan: TrainingPlan, precision: str = "auto",
                  gpus: Iterable[Gpu] = GPUS) -> list[GpuFit]:
    """For each GPU/instance: the per-GPU peak, fits/tight/no, and what to change when it does not fit."""
    rows: list[GpuFit] = []
    cache: dict[str, MemoryEstimate] = {}
    for gpu in gpus:
        p = _plan_for_gpu(plan, gpu, precision)
        est = cache.get(p.precision) or estimate_training_memory(spec, p)
        cache[p.precision] = est
        verdict = _verdict(est.peak_bytes, gpu.usable_bytes)
        sharded = sharded_verdict = None
        if gpu.count > 1:
            sharded = _sharded_peak(est, gpu.count)
            sharded_verdict = _verdict(sharded, gpu.usable_bytes)
        if verdict == "fits":
            advice = f"{est.peak_bytes / GIB:.1f} of {gpu.usable_bytes / GIB:.1f} GiB"
        elif verdict == "tight":
            fixes = suggest_changes(spec, p, gpu.usable_bytes)[:2]
            advice = "at the edge: expect OOM on long rows; " + "; or ".join(fixes)
        else:
            advice = "; or ".join(suggest_changes(spec, p, gpu.usable_bytes)[:3])
            if sharded_verdict in ("fits", "tight"):
                advice = (f"{'fits' if sharded_verdict == 'fits' else 'tight'} sharded over {gpu.count} GPUs "
                          f"(FSDP/ZeRO-3: {sharded / GIB:.1f} GiB per GPU)")
        rows.append(GpuFit(gpu.key, gpu.name, gpu.count, gpu.memory_gb, p.precision, est.peak_bytes, verdict,
                           sharded, sharded_verdict, advice))
    return rows


DEFAULT_MFU = 0.35


@dataclass
class TimeCost:
    tokens: int
    epochs: float
    flops: float
    flops_per_token_param: int  # k in k·N·tokens
    params_for_flops: int  # active params (MoE)
    gpu: str
    gpus: int
    peak_tflops: float
    mfu: float
    seconds: float
    price_per_gpu_hour: float
    cost_usd: float
    formula: str

    def as_dict(self) -> dict:
        return asdict(self)


def flops_multiplier(method: str, gradient_checkpointing: bool) -> int:
    """k in FLOPs ≈ k·N·tokens: 6 full (2 forward + 4 backward), 8 with recompute; LoRA skips the weight gradients:
    ~4 (+2 with recompute)."""
    if method == "full":
        return 8 if gradient_checkpointing else 6
    return 6 if gradient_checkpointing else 4


def estimate_time_cost(spec: ModelSpec, plan: TrainingPlan, tokens: int, gpu: Gpu | str, epochs: float = 1.0,
                       mfu: float = DEFAULT_MFU, price_per_gpu_hour: Optional[float] = None) -> TimeCost:
    """Wall time and cost: k·N·tokens·epochs / (GPUs · peak dense TFLOPs · MFU), × $/GPU-hour."""
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    if not isinstance(tokens, (int, float)) or tokens <= 0:
        raise EstimateError(f"token count must be positive (got {tokens!r}); pick a dataset or type a token count")
    if not epochs or epochs <= 0:
        raise EstimateError(f"epochs must be positive (got {epochs!r})")
    if not 0 < mfu <= 1:
        raise EstimateError(f"MFU must be between 0 and 1 (got {mfu!r}); 0.3-0.5 is typical")
    price = gpu.price_per_gpu_hour if price_per_gpu_hour is None else float(price_per_gpu_hour)
    if price < 0:
        raise EstimateError(f"price per GPU-hour must not be negative (got {price})")
    n = count_parameters(spec).active
    k = flops_multiplier(plan.method, plan.gradient_checkpointing)
    flops = float(k) * n * tokens * epochs
    prec = plan.precision if plan.precision != "auto" else resolve_precision("auto", "cuda", gpu.bf16)
    peak = gpu.tflops_32 if prec == "fp32" else gpu.tflops_16
    seconds = flops / (gpu.count * peak * 1e12 * mfu)
    cost = seconds / 3600 * price * gpu.count
    formula = (f"{k}·N·tokens·epochs = {k}·{n:,}·{int(tokens):,}·{epochs:g} = {flops:.3g} FLOPs; "
               f"÷ ({gpu.count} × {peak:g} TFLOPs × MFU {mfu:.0%}) = {seconds / 3600:.2f} h; "
               f"× {gpu.count} GPU × ${price:.2f}/GPU-h")
    return TimeCost(int(tokens), float(epochs), flops, k, n, gpu.key, gpu.count, peak, mfu, seconds, price, cost,
                    formula)
