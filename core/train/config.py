"""TrainConfig: the single contract between the Train tab, the CLI (YAML), the worker, the DB and Evaluate/Deploy.

Adding a hyperparameter means adding one field here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Method = Literal["lora", "qlora", "full"]
Objective = Literal["sft", "dpo", "orpo", "grpo"]
PreferenceLoss = Literal["sigmoid", "ipo", "hinge"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


MAX_STEPS = 100_000_000  # no run is that long; anything above is a typo or an attack on the run slot
MAX_EPOCHS = 10_000
INT_CEILINGS = {"batch_size": 65_536, "grad_accum": 65_536, "max_length": 1_048_576, "lora_r": 4_096,
                "lora_alpha": 65_536, "save_steps": MAX_STEPS, "eval_steps": MAX_STEPS, "logging_steps": MAX_STEPS,
                "save_total_limit": 1_000, "num_gpus": 1_024, "length_min": 10_000_000, "length_max": 10_000_000,
                "seed": 2**32 - 1}


class ConfigError(ValueError):
    """A config a person can fix; the message names the field and what is wrong."""


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: str = ""
    base_model: str = Field("default",
                            description="'default' (embedded SmolLM2-135M-Instruct), a local dir or a Hub id")
    dataset: str = Field(..., description="dataset id from the Data tab (e.g. '3') or a path to a data file")
    method: Method = "lora"
    objective: Objective = Field(
        "sft", description="what the run optimises: sft (supervised, on conversations), dpo (direct preference "
                           "optimisation on chosen/rejected pairs, against the model as it was at step 0) or orpo "
                           "(odds-ratio preference optimisation: SFT on chosen + a preference term, no reference) or "
                           "grpo (group relative policy optimisation: the model answers each prompt several times and "
                           "learns from the answers the rewards score above their group's mean)")
    beta: float = Field(0.1, description="DPO: how far from the reference the policy may move (0.1 typical); "
                                         "ORPO: the weight of the odds-ratio term (lambda); GRPO: the weight of the "
                                         "KL penalty against the model at step 0 (0 = none, no reference pass)")
    preference_loss: PreferenceLoss = Field("sigmoid", description="DPO loss: sigmoid (the paper's), ipo, hinge")
    keep_identical_pairs: bool = Field(False, description="keep pairs whose chosen and rejected answers are the "
                                                          "same text (they teach DPO nothing; dropped and counted)")
    rewards: list[str] = Field(default_factory=lambda: ["field_accuracy"],
                               description="GRPO: reward functions, summed (core.train.rewards): field_accuracy, "
                                           "valid_json, regex, length, rouge_l")
    reward_regex: Optional[str] = Field(None, description="GRPO reward 'regex': the pattern an answer should match")
    length_min: int = Field(0, description="GRPO reward 'length': fewest characters (0 = no lower bound)")
    length_max: int = Field(0, description="GRPO reward 'length': most characters (0 = no upper bound)")
    num_generations: int = Field(4, description="GRPO: answers sampled per prompt (the group; at least 2)")
    max_completion_length: int = Field(128, description="GRPO: most new tokens per sampled answer")
    temperature: float = Field(1.0, description="GRPO: sampling temperature of the answers")
    chat_template: Optional[str] = Field(
        None, description="prompt template for a model without one (or to replace its own): chatml, llama3, "
                          "mistral, alpaca, or a model id / folder to copy the chat template from; empty = the "
                          "model's own")

    max_length: int = Field(512, description="tokens per example; longer rows are truncated")
    num_epochs: float = 1.0
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: Scheduler = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: Precision = "auto"

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = Field(default_factory=lambda: ["all-linear"])

    gradient_checkpointing: bool = False
    packing: bool = Field(True,
                          description="padding-free batching: rows are concatenated with exact attention boundaries")
    group_by_length: bool = True
    seed: int = 42

    eval_split: float = Field(0.0, description="fraction of the training rows held out for eval loss (0 = none)")
    eval_steps: int = 0
    save_steps: int = Field(50, description="checkpoint (with optimizer state) every N steps; 0 = only at the end")
    save_total_limit: int = 2
    logging_steps: int = 1

    init_adapter: Optional[str] = Field(None, description="continue training from this adapter directory")
    max_wall_clock_hours: float = Field(0.0, description="stop the run (with a checkpoint, resumable) after this many "
                                                         "hours of running; 0 = no limit (a shared studio's admin "
                                                         "may set a ceiling: FTS_MAX_RUN_HOURS)")
    num_gpus: int = Field(1, description=">1 launches the worker through `accelerate launch`")

    @model_validator(mode="before")
    @classmethod
    def _objective_defaults(cls, data):
        """beta's default depends on the objective: 0.1 for DPO / ORPO, 0 (no KL term, no reference pass) for GRPO."""
        if isinstance(data, dict) and data.get("beta") is None:
            data = {**data, "beta": 0.0 if data.get("objective") == "grpo" else 0.1}
        return data

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

    @field_validator("batch_size", "grad_accum", "num_gpus", "logging_steps")
    @classmethod
    def _positive(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be at least 1 (got {v})")
        return v

    @field_validator("batch_size", "grad_accum", "max_length", "lora_r", "lora_alpha", "save_steps", "eval_steps",
                     "logging_steps", "save_total_limit", "num_gpus", "length_min", "length_max", "seed")
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
        return self

    # ---- YAML in and out -------------------------------------------------------------------------------------
    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> TrainConfig:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError("config YAML must be a mapping of field: value")
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return cls.from_yaml(p.read_text(encoding="utf-8"))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        parts.append(f"{loc}: {msg}")
    return "invalid training config: " + "; ".join(parts)
