"""TrainConfig: the single contract between the Train tab, the CLI (YAML and flags), the worker, the DB and
Evaluate/Deploy.

Adding a hyperparameter means adding one field here (with ``meta(at=…)`` where it sits on the Train tab's form): its
flag on ``python -m core train``, its widget, its int coercion and its choices follow (core.jobconfig).
"""
from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import ConfigDict, Field, field_validator, model_validator

from core.jobconfig import ConfigError, JobConfig, meta

Method = Literal["lora", "qlora", "full"]
Objective = Literal["sft", "dpo", "orpo", "grpo"]
PreferenceLoss = Literal["sigmoid", "ipo", "hinge"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Distributed = Literal["none", "ddp", "fsdp"]
TRACKERS = ("tensorboard", "mlflow", "trackio", "wandb")  # what report_to may name (core.train.trackers writes them)
REPORT_TO_ENV = "FTS_REPORT_TO"  # the admin's default for runs that do not say (comma-separated; empty = none)


MAX_STEPS = 100_000_000  # no run is that long; anything above is a typo or an attack on the run slot
MAX_EPOCHS = 10_000
INT_CEILINGS = {"batch_size": 65_536, "grad_accum": 65_536, "max_length": 1_048_576, "lora_r": 4_096,
                "lora_alpha": 65_536, "save_steps": MAX_STEPS, "eval_steps": MAX_STEPS, "logging_steps": MAX_STEPS,
                "save_total_limit": 1_000, "num_processes": 1_024, "length_min": 10_000_000, "length_max": 10_000_000,
                "seed": 2**32 - 1}
GRPO = {"objective": "grpo"}  # the fields that apply to GRPO runs only (the Train tab hides them for the others)


def parse_report_to(value) -> list[str]:
    """``report_to`` as the config keeps it: tracker names in TRACKERS' order, each once; [] = none. Takes a list, a
    comma-separated string (``"tensorboard,mlflow"``: the CLI's ``--report-to``), or items that hold commas; 'none'
    means no tracker and goes alone. An unknown name is a ValueError of one line naming the choices."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    names = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"tracker names are text, got {item!r}")
        names += [n.strip().lower() for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in (*TRACKERS, "none")]
    if unknown:
        raise ValueError(f"unknown tracker {unknown[0]!r}: choose from none, {', '.join(TRACKERS)} "
                         "(several separated by commas)")
    if "none" in names and len(set(names)) > 1:
        raise ValueError("'none' means no tracker: it cannot go with "
                         + ", ".join(sorted(set(names) - {"none"}, key=TRACKERS.index)))
    return [t for t in TRACKERS if t in names]


def default_report_to() -> list[str]:
    """The admin's default (``FTS_REPORT_TO``, e.g. ``tensorboard,mlflow``); unset or empty: none. A name in it that is
    not a tracker is left out (said once on stderr), so a typo there never stops the page or a run."""
    import os

    raw = os.environ.get(REPORT_TO_ENV, "")
    try:
        return parse_report_to(raw)
    except ValueError as exc:
        import sys

        kept = [n.strip().lower() for n in raw.split(",") if n.strip().lower() in TRACKERS]
        if raw not in _warned_env:
            _warned_env.add(raw)
            print(f"warning: {REPORT_TO_ENV}: {exc}; using {', '.join(kept) or 'none'}", file=sys.stderr)
        return [t for t in TRACKERS if t in kept]


_warned_env: set[str] = set()


class TrainConfig(JobConfig):
    """Each field carries its help text (``description``: the CLI's ``--help``) and, for the Train tab, where it sits
    on the form (``meta(at=(group, row, column))``) with its label; ``only`` marks the fields that apply to one
    objective. The tab's widgets, the CLI's flags, the int coercion and the choice lists all come from here."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    config_what: ClassVar[str] = "training config"

    name: str = Field("", description="the run's name (default: run-<id>)",
                      json_schema_extra=meta(label="Run name", at=("advanced", 0, 0)))
    base_model: str = Field("default",
                            description="'default' (embedded SmolLM2-135M-Instruct), a local dir or a Hub id",
                            json_schema_extra=meta(label="Base model", at=("source", 0, 0),
                                                   info="'default', a local model folder, or a Hub id (needs "
                                                        "network)"))
    dataset: str = Field(..., description="dataset id from the Data tab (e.g. '3') or a path to a data file",
                         json_schema_extra=meta(label="Training data", at=("source", 2, 0),
                                                info="a dataset imported in the Data tab, or a file path"))
    method: Method = Field("lora", description="lora, qlora (a 4-bit base + LoRA, bitsandbytes) or full",
                           json_schema_extra=meta(label="Method", at=("method", 0, 0), widget="radio",
                                                  info="QLoRA = 4-bit base + LoRA (bitsandbytes)"))
    objective: Objective = Field(
        "sft", description="what the run optimises: sft (supervised, on conversations), dpo (direct preference "
                           "optimisation on chosen/rejected pairs, against the model as it was at step 0) or orpo "
                           "(odds-ratio preference optimisation: SFT on chosen + a preference term, no reference) or "
                           "grpo (group relative policy optimisation: the model answers each prompt several times and "
                           "learns from the answers the rewards score above their group's mean)",
        json_schema_extra=meta(label="Objective", at=("method", 1, 0),
                               info="DPO / ORPO train on preference pairs (chosen vs rejected answers)"))
    beta: float = Field(0.1, description="DPO: how far from the reference the policy may move (0.1 typical); "
                                         "ORPO: the weight of the odds-ratio term (lambda); GRPO: the weight of the "
                                         "KL penalty against the model at step 0 (0 = none, no reference pass)",
                        json_schema_extra=meta(label="Beta (DPO) / lambda (ORPO) / KL (GRPO)", at=("method", 1, 1),
                                               minimum=0))
    preference_loss: PreferenceLoss = Field("sigmoid", description="DPO loss: sigmoid (the paper's), ipo, hinge")
    keep_identical_pairs: bool = Field(False, description="keep pairs whose chosen and rejected answers are the "
                                                          "same text (they teach DPO nothing; dropped and counted)")
    rewards: list[str] = Field(default_factory=lambda: ["field_accuracy"],
                               description="GRPO: reward functions, summed (core.train.rewards): field_accuracy, "
                                           "valid_json, regex, length, rouge_l",
                               json_schema_extra=meta(label="Rewards (summed per answer)", at=("grpo", 0, 0),
                                                      only=GRPO, widget="checkboxes"))
    reward_regex: Optional[str] = Field(None, description="GRPO reward 'regex': the pattern an answer should match",
                                        json_schema_extra=meta(label="Pattern (reward 'regex')", at=("grpo", 2, 0),
                                                               only=GRPO))
    length_min: int = Field(0, description="GRPO reward 'length': fewest characters (0 = no lower bound)",
                            json_schema_extra=meta(label="Min chars (reward 'length')", at=("grpo", 2, 1),
                                                   only=GRPO, minimum=0))
    length_max: int = Field(0, description="GRPO reward 'length': most characters (0 = no upper bound)",
                            json_schema_extra=meta(label="Max chars (reward 'length')", at=("grpo", 2, 2),
                                                   only=GRPO, minimum=0))
    num_generations: int = Field(4, description="GRPO: answers sampled per prompt (the group; at least 2)",
                                 json_schema_extra=meta(label="Answers per prompt", at=("grpo", 1, 0), only=GRPO,
                                                        minimum=2))
    max_completion_length: int = Field(128, description="GRPO: most new tokens per sampled answer",
                                       json_schema_extra=meta(label="Max new tokens", at=("grpo", 1, 1), only=GRPO,
                                                              minimum=1))
    temperature: float = Field(1.0, description="GRPO: sampling temperature of the answers",
                               json_schema_extra=meta(label="Temperature", at=("grpo", 1, 2), only=GRPO,
                                                      minimum=0.01))
    chat_template: Optional[str] = Field(
        None, description="prompt template for a model without one (or to replace its own): chatml, llama3, "
                          "mistral, alpaca, or a model id / folder to copy the chat template from; empty = the "
                          "model's own",
        json_schema_extra=meta(label="Prompt template", at=("source", 1, 0),
                               info="how conversations become text; for a base model without one — or type a model "
                                    "id / folder to copy its chat template"))

    max_length: int = Field(512, description="tokens per example; longer rows are truncated",
                            json_schema_extra=meta(label="Max length (tokens)", at=("basic", 1, 2), minimum=8))
    num_epochs: float = Field(1.0, description="passes over the training rows",
                              json_schema_extra=meta(label="Epochs", at=("basic", 0, 0), minimum=0))
    max_steps: int = Field(-1, description="> 0 overrides epochs",
                           json_schema_extra=meta(label="Max steps (-1 = epochs)", at=("basic", 0, 1)))
    batch_size: int = Field(4, description="examples per device per step",
                            json_schema_extra=meta(label="Batch size", at=("basic", 1, 1), minimum=1))
    grad_accum: int = Field(1, description="gradient accumulation steps (effective batch = batch size x this)",
                            json_schema_extra=meta(label="Grad accumulation", at=("advanced", 1, 0), minimum=1))
    learning_rate: float = Field(2e-4, description="peak learning rate",
                                 json_schema_extra=meta(label="Learning rate", at=("basic", 1, 0)))
    lr_scheduler: Scheduler = Field("linear", description="learning-rate schedule after the warmup",
                                    json_schema_extra=meta(label="LR scheduler", at=("advanced", 1, 1)))
    warmup_ratio: float = Field(0.0, description="fraction of the steps spent warming the learning rate up",
                                json_schema_extra=meta(label="Warmup ratio", at=("advanced", 1, 2)))
    weight_decay: float = Field(0.0, description="AdamW weight decay",
                                json_schema_extra=meta(label="Weight decay", at=("advanced", 4, 0)))
    max_grad_norm: float = Field(1.0, description="gradients are clipped to this norm")
    precision: Precision = Field("auto", description="auto: bf16/fp16 on a GPU, fp32 on a CPU",
                                 json_schema_extra=meta(label="Precision", at=("advanced", 4, 1),
                                                        info="auto: bf16/fp16 on GPU, fp32 on CPU"))

    lora_r: int = Field(16, description="LoRA rank",
                        json_schema_extra=meta(label="LoRA r", at=("advanced", 2, 0)))
    lora_alpha: int = Field(32, description="LoRA scaling alpha",
                            json_schema_extra=meta(label="LoRA alpha", at=("advanced", 2, 1)))
    lora_dropout: float = Field(0.0, description="dropout on the LoRA layers",
                                json_schema_extra=meta(label="LoRA dropout", at=("advanced", 2, 2)))
    lora_target_modules: list[str] = Field(default_factory=lambda: ["all-linear"],
                                           description="modules LoRA wraps: 'all-linear' or names like q_proj v_proj",
                                           json_schema_extra=meta(label="LoRA target modules", at=("advanced", 3, 0),
                                                                  widget="text",
                                                                  info="'all-linear' or names like q_proj,v_proj"))

    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (less "
                                                            "memory, slower)",
                                         json_schema_extra=meta(label="Gradient checkpointing",
                                                                at=("advanced", 6, 0)))
    packing: bool = Field(True,
                          description="padding-free batching: rows are concatenated with exact attention boundaries",
                          json_schema_extra=meta(label="Padding-free batching", at=("advanced", 6, 1)))
    group_by_length: bool = Field(True, description="batch rows of similar length together")
    seed: int = Field(42, description="random seed (shuffling, initialisation, sampling)",
                      json_schema_extra=meta(label="Seed", at=("advanced", 4, 2)))

    eval_split: float = Field(0.0, description="fraction of the training rows held out for eval loss (0 = none)",
                              json_schema_extra=meta(label="Eval split (0-0.5)", at=("advanced", 5, 0)))
    eval_steps: int = Field(0, description="eval loss every N steps (0 = at the end only, with an eval split)",
                            json_schema_extra=meta(label="Eval every N steps", at=("advanced", 5, 1)))
    save_steps: int = Field(50, description="checkpoint (with optimizer state) every N steps; 0 = only at the end",
                            json_schema_extra=meta(label="Checkpoint every N steps", at=("advanced", 5, 2)))
    save_total_limit: int = Field(2, description="checkpoints kept (the oldest are deleted)")
    logging_steps: int = Field(1, description="a metrics row every N steps")

    report_to: list[str] = Field(
        default_factory=default_report_to,
        description="experiment trackers the run also reports to (params, the studio's curves, tags; the adapter "
                    "where the tracker keeps files): tensorboard (event files in the run folder), mlflow (the "
                    "workspace's mlflow.db unless MLFLOW_TRACKING_URI), trackio (local), wandb (offline unless "
                    "WANDB_API_KEY is set); several allowed, comma-separated; none = only the studio's own curves "
                    f"(default: the admin's {REPORT_TO_ENV}, else none)",
        json_schema_extra=meta(label="Report to (experiment trackers)", at=("advanced", 7, 0), widget="checkboxes",
                               info="also write the run's params and curves there; none ticked = only the studio's "
                                    "own curves. A tracker that is missing or unreachable is skipped with a warning "
                                    "in the log"))
    init_adapter: Optional[str] = Field(None, description="continue training from this adapter directory")
    max_wall_clock_hours: float = Field(0.0, description="stop the run (with a checkpoint, resumable) after this many "
                                                         "hours of running; 0 = no limit (a shared studio's admin "
                                                         "may set a ceiling: FTS_MAX_RUN_HOURS)")
    num_processes: int = Field(1, description="processes that train together: one per GPU, or CPU processes where "
                                              "there is no GPU (at most the host's GPUs / CPU cores); the global "
                                              "batch is batch size x grad accumulation x this",
                               json_schema_extra=meta(label="Processes", at=("parallel", 0, 0), minimum=1,
                                                      info="one per GPU (CPU processes on a host without one)"))
    distributed: Distributed = Field(
        "none", description="how several processes share the work: none (one process), ddp (each process holds the "
                            "whole model; gradients are averaged) or fsdp (FSDP2: weights, gradients and optimizer "
                            "states sharded over the processes by decoder layer; sharded checkpoints, the usual "
                            "adapter/model at the end); several processes mean ddp unless you say fsdp, one "
                            "process means none",
        json_schema_extra=meta(label="Distributed", at=("parallel", 0, 1), widget="radio",
                               info="ddp: a whole copy per process; fsdp: sharded (less memory per process)"))

    @model_validator(mode="before")
    @classmethod
    def _old_num_gpus(cls, data):
        """Configs written before issue 27 said ``num_gpus: N`` (N > 1: DDP through accelerate): read as
        ``num_processes: N`` (+ ``distributed: ddp``); more than one process without a strategy means ddp."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "num_gpus" in data:
            old = data.pop("num_gpus")
            if data.get("num_processes") is None:
                data["num_processes"] = old
        n = data.get("num_processes")
        if isinstance(n, (int, float)) and not isinstance(n, bool):
            if n > 1 and data.get("distributed") in (None, "none"):
                data["distributed"] = "ddp"  # several processes share the work one way or another
            elif n == 1 and data.get("distributed") is not None:
                data["distributed"] = "none"  # one process has no strategy (a YAML's, overridden by a flag)
        return data

    @model_validator(mode="before")
    @classmethod
    def _objective_defaults(cls, data):
        """beta's default depends on the objective: 0.1 for DPO / ORPO, 0 (no KL term, no reference pass) for GRPO."""
        if isinstance(data, dict) and data.get("beta") is None:
            data = {**data, "beta": 0.0 if data.get("objective") == "grpo" else 0.1}
        return data

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to(cls, v):
        return parse_report_to(v)

    @field_validator("learning_rate")
    @classmethod
    def _lr(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"learning rate must be > 0 (got {v})")
        if v >= 1:
            raise ValueError(f"learning rate {v} is far too large; typical LoRA values are 1e-4 to 5e-4")
        return v

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: float) -> float:
        if not 0 <= v <= 10:
            raise ValueError(f"beta must be between 0 and 10 (got {v}); 0.1 is typical")
        return v

    @field_validator("num_generations")
    @classmethod
    def _generations(cls, v: int) -> int:
        if not 2 <= v <= 64:
            raise ValueError(f"num_generations must be between 2 and 64 (got {v}): GRPO compares answers within a "
                             "group")
        return v

    @field_validator("max_completion_length")
    @classmethod
    def _completion_length(cls, v: int) -> int:
        if not 1 <= v <= 32768:
            raise ValueError(f"max_completion_length must be between 1 and 32768 tokens (got {v})")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if not 0 < v <= 5:
            raise ValueError(f"temperature must be in (0, 5] (got {v}); GRPO needs varied answers, 0.7-1.0 is typical")
        return v

    @field_validator("lora_r")
    @classmethod
    def _r(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"LoRA rank r must be at least 1 (got {v})")
        return v

    @field_validator("max_length")
    @classmethod
    def _max_length(cls, v: int) -> int:
        if v < 8:
            raise ValueError(f"max length must be at least 8 tokens (got {v})")
        return v

    @field_validator("batch_size", "grad_accum", "num_processes", "logging_steps")
    @classmethod
    def _positive(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be at least 1 (got {v})")
        return v

    @field_validator("batch_size", "grad_accum", "max_length", "lora_r", "lora_alpha", "save_steps", "eval_steps",
                     "logging_steps", "save_total_limit", "num_processes", "length_min", "length_max", "seed")
    @classmethod
    def _at_most(cls, v: int, info) -> int:
        if v > INT_CEILINGS[info.field_name]:
            raise ValueError(f"{info.field_name} must be at most {INT_CEILINGS[info.field_name]:,} (got {v:,})")
        if info.field_name == "seed" and v < 0:
            raise ValueError(f"seed must be between 0 and {INT_CEILINGS['seed']:,} (got {v:,})")
        return v

    @field_validator("lora_alpha")
    @classmethod
    def _alpha(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"LoRA alpha must be at least 1 (got {v})")
        return v

    @field_validator("lora_dropout", "warmup_ratio")
    @classmethod
    def _fraction(cls, v: float, info) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"{info.field_name} must be in [0, 1) (got {v})")
        return v

    @field_validator("eval_split")
    @classmethod
    def _eval_split(cls, v: float) -> float:
        if not 0 <= v <= 0.5:
            raise ValueError(f"eval_split must be between 0 and 0.5 (got {v})")
        return v

    @field_validator("num_epochs")
    @classmethod
    def _epochs(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"epochs must be > 0 (got {v})")
        if not v <= MAX_EPOCHS:
            raise ValueError(f"epochs must be at most {MAX_EPOCHS:,} (got {v:g}); use max_steps for a fixed budget")
        return v

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, v: int) -> int:
        if v > MAX_STEPS:
            raise ValueError(f"max_steps must be at most {MAX_STEPS:,} (got {v:,}); -1 = use epochs")
        return v

    @field_validator("max_wall_clock_hours")
    @classmethod
    def _wall_clock(cls, v: float) -> float:
        if not 0 <= v <= 24 * 365:
            raise ValueError(f"max_wall_clock_hours must be between 0 (no limit) and 8760 (got {v:g})")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from core.text import clean_label

        v = clean_label(v)
        if len(v) > 80:
            raise ValueError(f"a run's name is at most 80 characters (this one has {len(v)})")
        return v

    @field_validator("save_steps", "eval_steps", "weight_decay", "save_total_limit", "length_min", "length_max")
    @classmethod
    def _non_negative(cls, v, info):
        if v < 0:
            raise ValueError(f"{info.field_name} must not be negative (got {v})")
        return v

    @field_validator("dataset", "base_model")
    @classmethod
    def _non_empty(cls, v: str, info) -> str:
        v = (v or "").strip()
        if not v:
            raise ValueError(f"{info.field_name} is required")
        return v

    @field_validator("chat_template")
    @classmethod
    def _template(cls, v: Optional[str]) -> Optional[str]:
        from core.data.templates import normalise_choice

        return normalise_choice(v)

    @field_validator("lora_target_modules")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        v = [m.strip() for m in v if m and m.strip()]
        if not v:
            raise ValueError("lora_target_modules needs at least one module name (or 'all-linear')")
        return v

    @model_validator(mode="after")
    def _method_specific(self) -> TrainConfig:
        if self.method == "full" and self.init_adapter:
            raise ValueError("init_adapter continues a LoRA adapter; it cannot be used with method 'full'")
        if self.beta == 0 and self.objective != "grpo":
            raise ValueError(f"beta must be in (0, 10] for {self.objective} (got 0); 0.1 is typical")
        if self.objective == "grpo":
            from core.train.rewards import check_rewards

            check_rewards(self.rewards, regex=self.reward_regex, length_min=self.length_min,
                          length_max=self.length_max)
            if self.eval_split or self.eval_steps:
                raise ValueError("GRPO runs have no eval loss (their answers are sampled): leave eval_split and "
                                 "eval_steps at 0 and measure the run in the Evaluate tab")
        self._check_distributed()
        return self

    def _check_distributed(self) -> None:
        """The strategy fits the process count, the objective and the method (the host's own limit is checked at
        submit: core.train.jobs)."""
        n, how = self.num_processes, self.distributed
        if n > 1 and self.objective != "sft":
            raise ValueError(f"several processes train objective 'sft' only for now; {self.objective} runs in one "
                             "process (num_processes 1)")
        if how == "fsdp" and self.method == "qlora":
            raise ValueError("FSDP with QLoRA needs CUDA GPUs, bitsandbytes and the 4-bit weights stored in the "
                             "compute dtype (accelerate/PEFT's FSDP-QLoRA), which the studio does not run yet: use "
                             "distributed 'ddp' with QLoRA, or 'fsdp' with method lora or full")


__all__ = ["TRACKERS", "ConfigError", "TrainConfig", "default_report_to", "parse_report_to"]
