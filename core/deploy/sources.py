"""A running deployment as a model source: its OpenAI-compatible endpoint streams as one side of the Playground, or
answers ``python -m core generate --model deployment:ID``.

core.generate resolves every other source (the base, a run, a folder) and only streams from an endpoint it is given;
naming a deployment is the deploy layer's, so generate never imports it.
"""
from __future__ import annotations

from core.deploy.deployments import DeployError, get
from core.generate import GenerateError, ModelSource, resolve_source


def source_for_deployment(dep_id: int) -> ModelSource:
    """A running deployment (the Deploy tab's local server, or a TGI / vLLM container) as a Playground side."""
    try:
        dep = get(dep_id)
    except DeployError as exc:
        raise GenerateError(str(exc)) from None
    if dep.status != "running":
        raise GenerateError(f"deployment {dep_id} is {dep.status}, not running: start it in the Deploy tab")
    return ModelSource(f"deployment #{dep.id} {dep.served_name} ({dep.target})", dep.served_name, None, dep.run_id,
                       endpoint=dep.url)


def resolve_source_or_deployment(text: str | None) -> ModelSource:
    """``deployment:3`` (a running deployment's endpoint), or anything core.generate.resolve_source takes."""
    ref = (text or "").strip()
    if ref.lower().startswith("deployment:"):
        digits = ref.split(":", 1)[1].strip().lstrip("#")
        if not digits.isdigit():
            raise GenerateError(f"'{ref}' is not a deployment id (use deployment:3)")
        return source_for_deployment(int(digits))
    return resolve_source(text)
