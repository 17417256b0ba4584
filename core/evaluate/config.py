"""EvalConfig: one typed object for an evaluation — the Evaluate tab builds it, the CLI parses it, the job runs it,
the Evaluation row stores it."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from core.jobconfig import ConfigError, JobConfig, meta

Mode = Literal["generation", "multiple_choice", "lm_eval"]
SPLITS = ("test", "validation", "train", "all")
NATIVE_TASKS = ("arc", "openbookqa", "hellaswag", "truthfulqa", "mmlu")  # = core.evaluate.multiple_choice's


class EvalConfigError(ConfigError):
    """A config a person can fix; the message names the field."""


class EvalConfig(JobConfig):
    """Each field's description is its ``python -m core evaluate`` flag's help (core.jobconfig.add_flags)."""

    config_what: ClassVar[str] = "evaluation"
    config_error: ClassVar[type[ValueError]] = EvalConfigError

    name: str = Field("", description="the evaluation's name")
    run_id: int | None = Field(None, description="the training run to evaluate (its adapter or model is 'tuned')",
                               json_schema_extra=meta(flag="run"))
    tuned: str | None = Field(None, description="or any adapter / model folder as the tuned side",
                              json_schema_extra=meta(flag="model"))
    base: str | None = Field(None, description="the base side; default: the tuned side's base model")
    dataset: str | None = Field(None, description="a Data-tab dataset id; default: the run's own held-out rows")
    split: str | None = Field(None, description="test | validation | train | all; default: a dataset is scored "
                                                "whole (all), a run's own rows are its held-out ones (test, else "
                                                "validation)", json_schema_extra=meta(choices=SPLITS))
    limit: int | None = Field(200, description="evaluate a random sample of at most this many rows (None: all); "
                                               "left unset in multiple-choice mode: every row, as the harness")
    seed: int = Field(0, description="the seed of the row sample and of sampled answers")
    mode: Mode = Field("generation", description="generation (answers scored against the references), "
                                                 "multiple_choice (choices scored by log-likelihood) or lm_eval (an "
                                                 "lm-evaluation-harness task)")
    max_new_tokens: int = Field(128, description="most new tokens per answer")
    temperature: float = Field(0.0, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, description="nucleus sampling's probability mass")
    batch_size: int = Field(16, description="prompts per batch (base and tuned rows of a prompt share a batch)")
    mc_style: Literal["arc", "mmlu", "native"] = Field(
        "arc", description="multiple-choice prompt: arc, mmlu, or native (lm-eval's own task for the layout)",
        json_schema_extra=meta(flag="style"))
    mc_task: str | None = Field(None, description="native style: the harness task to follow (arc, openbookqa, "
                                                  "hellaswag, truthfulqa, mmlu); default: the rows' layout",
                                json_schema_extra=meta(flag="native_task", choices=NATIVE_TASKS))
    num_fewshot: int | None = Field(None, description="few-shot examples before each question (default 0, as the "
                                                      "harness's tasks)")
    fewshot_split: str | None = Field(None, description="the split few-shot examples come from (default: the rows "
                                                        "being scored, each question left out of its own draw)",
                                      json_schema_extra=meta(choices=SPLITS))
    lm_eval_task: str | None = Field(None, description="an lm-evaluation-harness task name (needs its data)")

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

    @field_validator("split", "fewshot_split")
    @classmethod
    def _split(cls, v: str | None, info) -> str | None:
        v = (v or "").strip().lower()
        if not v or v == "auto":
            return None
        if v not in SPLITS:
            raise ValueError(f"{info.field_name} must be test, validation, train or all (got '{v}')")
        return v

    @field_validator("mc_task")
    @classmethod
    def _task(cls, v: str | None) -> str | None:
        v = (v or "").strip().lower()
        if not v or v == "auto":
            return None
        if v not in NATIVE_TASKS:
            raise ValueError(f"unknown task '{v}'; the native style follows {', '.join(NATIVE_TASKS)} (or leave it "
                             "empty: the rows' layout decides)")
        return v

    @field_validator("num_fewshot")
    @classmethod
    def _shots(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= 64:
            raise ValueError(f"num_fewshot must be from 0 to 64 (got {v})")
        return v

    @model_validator(mode="after")
    def _sides(self) -> EvalConfig:
        if self.run_id is None and not (self.tuned or "").strip():
            raise ValueError("choose what to evaluate: a training run (run_id) or a model / adapter folder (tuned)")
        if self.mode == "lm_eval" and not (self.lm_eval_task or "").strip():
            raise ValueError("mode lm_eval needs lm_eval_task (an lm-evaluation-harness task name, e.g. arc_easy)")
        if self.mode != "lm_eval" and self.run_id is None and not self.dataset:
            raise ValueError("evaluating a folder needs a dataset (only a training run has its own held-out rows)")
        if self.mode == "multiple_choice" and "limit" not in self.model_fields_set:
            self.limit = None  # a benchmark is scored whole unless a sample is asked for
        if self.mc_task and self.mc_style != "native":
            raise ValueError(f"mc_task ({self.mc_task}) goes with mc_style native; the {self.mc_style} style is the "
                             f"{self.mc_style} formulation")
        if self.mc_task == "truthfulqa" and self.num_fewshot:
            raise ValueError("TruthfulQA's formulation is its fixed 6-shot Q/A primer (lm-evaluation-harness ignores "
                             "num_fewshot for it): leave num_fewshot at 0")
        if self.fewshot_split and not self.num_fewshot:
            raise ValueError("fewshot_split names where few-shot examples come from: set num_fewshot too")
        return self

    def resolved_split(self) -> str:
        """The split scored: the one asked for; else a dataset whole (``all``), a run's own rows ``test`` (the job
        falls back to ``validation`` when the run has no test rows)."""
        return self.split or ("all" if self.dataset else "test")
