"""What a deployment serves: a training run (its merged folder, or its base model for multi-LoRA serving), the
embedded default or a model folder, and the name clients ask for it by."""
from __future__ import annotations

import re
from pathlib import Path

from core.deploy.deployment_rows import DeployError


def resolve_target_model(model_ref: str) -> tuple[int | None, str, str, bool]:
    """(run id, model folder, served name, needs a merge first) for "run:7" / "7" / "default" / a model folder."""
    from core.deploy.export import _fresh, merged_dir, trained_run
    from core.models import ModelNotFoundError, resolve_model

    ref = (model_ref or "").strip() or "default"
    digits = ref.split(":", 1)[-1].lstrip("#") if ref.lower().startswith(("run:", "#")) else ref
    if digits.isdigit():
        run = trained_run(int(digits))
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in (run.name or "")).strip("-") or "model"
        name = slug if re.match(rf"run-{run.id}(\D|$)", slug) else f"run-{run.id}-{slug}"
        if run.method == "full":
            return run.id, run.adapter_path, name, False
        target = merged_dir(run.id)
        return run.id, str(target), name, not _fresh(target, Path(run.adapter_path))
    try:
        resolved = resolve_model(ref)
    except ModelNotFoundError as exc:
        raise DeployError(str(exc)) from None
    if not Path(resolved.path).is_dir():
        raise DeployError(f"{ref} is not a local model folder; the local server serves folders (download it first)")
    name = Path(resolved.path).name if resolved.kind != "default" else "smollm2-135m-instruct"
    return None, resolved.path, name, False


def base_dir_of(run_id: int | None) -> str:
    from core.deploy.export import trained_run
    from core.models import resolve_model

    return resolve_model(trained_run(run_id).base_model or "default").path
