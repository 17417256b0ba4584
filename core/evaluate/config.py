"""EvalConfig: one typed object for an evaluation — the Evaluate tab builds it, the CLI parses it, the job runs it,
the Evaluation row stores it."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Mode = Literal["generation", "multiple_choice", "lm_eval"]


class EvalConfigError(ValueError):
    """A config a person can fix; the message names the field."""


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    run_id: int | None = Field(None, description="the training run to evaluate (its adapter or model is 'tuned')")
    tuned: str | None = Field(None, description="or any adapter / model folder as the tuned side")
    base: str | None = Field(None, description="the base side; default: the tuned side's base model")
    dataset: str | None = Field(None, description="a Data-tab dataset id; default: the run's own held-out rows")
    split: str = Field("test", description="test | validation | train")
    limit: int | None = Field(200, description="evaluate a random sample of at most this many rows (None: all)")
    seed: int = 0
    mode: Mode = "generation"
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = Field(16, description="prompts per batch (base and tuned rows of a prompt share a batch)")
    mc_style: Literal["arc", "mmlu"] = "arc"
    lm_eval_task: str | None = None

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"limit must be at least 1 (got {v}); leave it empty for every row")
        return v

    @field_validator("max_new_tokens", "batch_size")
    @classmethod
    def _positive(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be at least 1 (got {v})")
        return v

    @field_validator("split")
    @classmethod
    def _split(cls, v: str) -> str:
        v = (v or "test").strip().lower()
        if v not in ("test", "validation", "train"):
            raise ValueError(f"split must be test, validation or train (got '{v}')")
        return v

    @model_validator(mode="after")
    def _sides(self) -> EvalConfig:
        if self.run_id is None and not (self.tuned or "").strip():
            raise ValueError("choose what to evaluate: a training run (run_id) or a model / adapter folder (tuned)")
        if self.mode == "lm_eval" and not (self.lm_eval_task or "").strip():
            raise ValueError("mode lm_eval needs lm_eval_task (an lm-evaluation-harness task name, e.g. arc_easy)")
        if self.mode != "lm_eval" and self.run_id is None and not self.dataset:
            raise ValueError("evaluating a folder needs a dataset (only a training run has its own held-out rows)")
        return self

    @classmethod
    def from_dict(cls, data: dict) -> EvalConfig:
        try:
            return cls(**data)
        except ValidationError as exc:
            parts = []
            for err in exc.errors():
                loc = ".".join(str(x) for x in err["loc"]) or "config"
                parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
            raise EvalConfigError("invalid evaluation: " + "; ".join(parts)) from None
