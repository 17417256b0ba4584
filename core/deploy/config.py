"""The Deploy tab's two configs, on the job configs' base (core.jobconfig: one error format, the CLI flags generated
from the fields): ExportConfig (the ``export`` job kind, core.deploy.export) and DeployConfig (what a deployment is
asked for: ``python -m core deploy`` and the tab's Serve form). Light on purpose: the CLI builds its parser
from them."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from core.jobconfig import JobConfig, meta

Format = Literal["safetensors", "gguf", "adapter", "hub"]
Target = Literal["local", "tgi", "vllm", "container"]
MAX_GPUS = 1_024
CONTAINER = {"target": ["tgi", "vllm"]}  # the fields that size a TGI / vLLM container (a local server ignores them)
ANY_CONTAINER = {"target": ["tgi", "vllm", "container"]}  # the limits every container gets


class ExportConfig(JobConfig):
    """Each field's description is its ``python -m core export`` flag's help (core.jobconfig.add_flags)."""

    config_what: ClassVar[str] = "export"

    @classmethod
    def error_class(cls) -> type[ValueError]:
        from core.runs.errors import JobError  # what submit_export's callers catch

        return JobError

    run_id: int = Field(..., description="the finished training run to export", json_schema_extra=meta(flag="run"))
    format: Format = Field("safetensors", description="safetensors (merged), gguf (llama.cpp / Ollama), adapter "
                                                      "(kept separate) or hub (pushed; token: HF_TOKEN)")
    quant: Literal["f16", "q8_0"] = Field("f16", description="GGUF tensor type")
    out_dir: str | None = Field(None, description="copy the result here too (a new or empty folder)",
                                json_schema_extra=meta(flag="out"))
    name: str = Field("", description="the export job's name")
    repo_id: str | None = Field(None, description="hub: the repository to push to (owner/name)")
    private: bool = Field(True, description="hub: a private repository")
    push_adapter: bool = Field(False, description="hub: push the adapter alone instead of the merged model")


class DeployConfig(JobConfig):
    """Each field's description is its ``python -m core deploy`` flag's help."""

    config_what: ClassVar[str] = "deployment"

    run_id: int | None = Field(None, description="the finished training run to serve", json_schema_extra=meta(
        flag="run"))
    model: str | None = Field(None, description="or: default | a model folder (a run: run:ID)")
    target: Target = Field("local", description="local (an OpenAI-compatible server here), tgi or vllm (a GPU "
                                                "container; planned where no Docker engine answers) or container "
                                                "(the local server in the studio's image, through Docker)")
    port: int | None = Field(None, description="the port to serve on (default: a free one)")
    gpu: str | None = Field(None, description="GPU name from the Estimate tab's catalog (TGI/vLLM sizing)",
                            json_schema_extra=meta(only=CONTAINER))
    num_gpus: int = Field(1, description="GPUs the container uses (TGI/vLLM)", json_schema_extra=meta(only=CONTAINER))
    quantize_4bit: bool = Field(False, description="serve the weights in 4 bits (bitsandbytes NF4; TGI/vLLM)",
                                json_schema_extra=meta(only=CONTAINER))
    keep_adapter: bool = Field(False, description="serve base + adapter (multi-LoRA) instead of merged (TGI/vLLM)",
                               json_schema_extra=meta(only=CONTAINER))
    memory_gb: float | None = Field(None, description="the container's memory limit in GB (default: twice the "
                                                      "weights + 2 GB)", json_schema_extra=meta(only=ANY_CONTAINER))
    cpus: float | None = Field(None, description="CPUs the container may use (default: all)",
                               json_schema_extra=meta(only=ANY_CONTAINER))
    timeout_s: float | None = Field(None, description="seconds to wait for /health (local, container)",
                                    json_schema_extra=meta(flag="timeout"))

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 65535:
            raise ValueError(f"port must be between 1 and 65535 (got {v})")
        return v

    @field_validator("num_gpus")
    @classmethod
    def _gpus(cls, v: int) -> int:
        if not 1 <= v <= MAX_GPUS:
            raise ValueError(f"num_gpus must be between 1 and {MAX_GPUS:,} (got {v:,})")
        return v

    @field_validator("memory_gb", "cpus")
    @classmethod
    def _limits(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError(f"a container limit must be more than 0 (got {v:g})")
        return v

    @field_validator("timeout_s")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError(f"timeout must be more than 0 seconds (got {v:g})")
        return v

    @field_validator("model", "gpu")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return (v or "").strip() or None

    @model_validator(mode="after")
    def _one_model(self) -> DeployConfig:
        if self.run_id is not None and self.model:
            raise ValueError(f"serve a run (run {self.run_id}) or a model ({self.model}), not both")
        return self

    def model_ref(self) -> str:
        """The reference core.deploy.deployments resolves: ``run:ID``, a model folder or ``default``."""
        return f"run:{self.run_id}" if self.run_id is not None else (self.model or "default")
