"""What to load: :func:`resolve_source` turns what a person picked — ``default`` / a Hub id / a model folder, a finished
training run (``run:7`` or ``7``), an adapter folder — into a :class:`ModelSource`: a base model plus, for LoRA/QLoRA,
an adapter."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.generate.errors import GenerateError


@dataclass(frozen=True)
class ModelSource:
    """A model a person can pick: a base model, optionally with a LoRA adapter on top."""

    label: str  # what to show: "SmolLM2-135M-Instruct (embedded)", "run #7 demo-lora", "adapter …/adapter"
    base: str  # a model reference core.models.resolve_model understands (an endpoint's served model name)
    adapter: str | None = None  # adapter folder (LoRA/QLoRA runs)
    run_id: int | None = None
    endpoint: str | None = None  # an OpenAI-compatible server's base URL (…/v1): a running deployment
    # the environment variable holding the endpoint's API key (the admin's judge endpoint): read when a request goes
    # out, never kept — a source names where the key is, not the key
    api_key_env: str | None = None

    @property
    def key(self) -> str:
        return f"{self.endpoint}|{self.base}" if self.endpoint else f"{self.base}|{self.adapter or ''}"


def source_for_run(run_id: int) -> ModelSource:
    """A finished training run as a model: base + its adapter, or its full fine-tuned model folder."""
    from core import runs

    try:
        run = runs.get_run(run_id)
    except runs.JobError as exc:
        raise GenerateError(str(exc)) from None
    if run.kind != "train":
        raise GenerateError(f"run {run_id} is a {run.kind} job, not a training run")
    if not run.adapter_path or not Path(run.adapter_path).is_dir():
        raise GenerateError(f"run {run_id} has no trained adapter or model to load (status {run.status}"
                            + (f": {run.error.splitlines()[0]}" if run.error else "") + ")")
    label = f"run #{run.id} {run.name}"
    if run.method == "full":
        return ModelSource(label, run.adapter_path, None, run.id)
    return ModelSource(label, run.base_model or "default", run.adapter_path, run.id)


def resolve_source(text: str | None) -> ModelSource:
    """``default`` / a Hub id / a model folder; ``run:7`` or ``7`` (a training run); an adapter folder. A running
    deployment (``deployment:3``) is a source only where its endpoint can serve: the Playground and ``python -m core
    generate`` resolve it (core.deploy.sources), everything else is told to name the run it serves."""
    from core.models import ADAPTER_CONFIG_FILE, DEFAULT_MODEL_NAME, ModelNotFoundError, resolve_model

    ref = (text or "").strip() or "default"
    low = ref.lower()
    if low.startswith("deployment:"):
        raise GenerateError(f"'{ref}' is a deployment's endpoint, which only the Playground and `python -m core "
                            "generate` can use: name the run it serves, a model or an adapter folder here")
    if low.startswith(("run:", "#")) or ref.isdigit():
        digits = ref.split(":", 1)[-1].lstrip("#").strip()
        if not digits.isdigit():
            raise GenerateError(f"'{ref}' is not a run id (use run:7 or 7)")
        return source_for_run(int(digits))
    from core.access import PathNotAllowed, locate

    try:  # the one resolver first: in a shared studio a folder outside the allowed roots is refused unopened
        loc = locate(ref, "the model folder")
    except PathNotAllowed as exc:
        raise GenerateError(str(exc)) from None
    p = loc.path if loc.kind == "path" else None
    if p is not None and p.is_dir() and (p / ADAPTER_CONFIG_FILE).is_file():
        from core.models import AdapterReadError, adapter_base_model, check_safe_to_load

        try:
            check_safe_to_load(p)  # safetensors only, as for every folder a user points at
            base = adapter_base_model(p)
            # the base an adapter names (its adapter_config.json is the uploader's text) passes the resolver too
            resolve_model(base, prepare_default=False, what=f"the base model named by adapter {p.name}")
        except (ModelNotFoundError, AdapterReadError) as exc:
            raise GenerateError(str(exc)) from None
        return ModelSource(f"adapter {p}", base, str(p))
    try:
        resolved = resolve_model(ref, prepare_default=False)
    except ModelNotFoundError as exc:
        raise GenerateError(str(exc)) from None
    label = f"{DEFAULT_MODEL_NAME} (embedded)" if resolved.kind == "default" else resolved.display_name
    return ModelSource(label, ref, None)
