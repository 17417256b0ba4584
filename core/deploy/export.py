"""The ``export`` job kind: a finished training run as files a server or another tool loads.

Formats (``ExportConfig.format``):

* ``safetensors`` — LoRA/QLoRA merged into the base (core.deploy.merge), with tokenizer, chat template and
  generation config; a full fine-tune is already such a folder.
* ``gguf`` — the merged model as one GGUF file (F16 or Q8_0) for llama.cpp / Ollama, plus an Ollama ``Modelfile``.
* ``adapter`` — the adapter kept separate, for multi-LoRA serving (TGI ``LORA_ADAPTERS``, vLLM ``--lora-modules``).
* ``hub`` — the merged model (or, with ``push_adapter``, the adapter) pushed to a Hugging Face Hub repository with a
  model card made from the run (core.deploy.hub); the token comes from the environment, never from the config.

The merged folder of a run lives at ``runs/<run id>/merged/`` (one per run, reused by later exports and by the local
server while it is newer than the adapter); other outputs go under the export job's own folder, or ``out_dir``.
Runs in its own process (the runs core), never in the dashboard's. Its config: core.deploy.config.ExportConfig.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from core.deploy.config import ExportConfig
from core.runs import paths
from core.runs.errors import JobError


def merged_dir(run_id: int) -> Path:
    return paths.job_dir(run_id) / "merged"


def trained_run(run_id: int):
    """The training run behind an export or a deployment, refused with a reason when it has nothing to export."""
    from core import runs

    run = runs.get_run(run_id)
    if run.kind != "train":
        raise JobError(f"run {run_id} is a {run.kind} job, not a training run")
    if not run.adapter_path or not Path(run.adapter_path).is_dir():
        why = f" ({run.error.splitlines()[0]})" if run.error else ""
        raise JobError(f"run {run_id} is {run.status} and has no trained adapter or model to export{why}")
    return run


def _fresh(merged: Path, adapter: Path) -> bool:
    """The merged folder is complete and was made from this adapter's weights as they are now."""
    import json

    from core.deploy.merge import adapter_fingerprint, is_complete

    if not is_complete(merged):
        return False
    try:
        made_from = json.loads((merged / "fts_merge.json").read_text(encoding="utf-8")).get("adapter_weights")
    except (OSError, ValueError):
        return False
    return made_from is not None and made_from == adapter_fingerprint(adapter)


def ensure_merged(run, progress=None, log=print) -> tuple[Path, str]:
    """The run as one model folder: (folder, note). Merges LoRA/QLoRA once into ``runs/<id>/merged``."""
    from core.deploy.merge import merge_lora
    from core.models import resolve_model

    adapter = Path(run.adapter_path)
    if run.method == "full":
        return adapter, "a full fine-tune: the trained model folder is served as it is"
    note = ("QLoRA adapter merged into the 16-bit base weights (it was trained against their 4-bit quantisation; "
            "outputs differ slightly from the 4-bit model evaluated)" if run.method == "qlora"
            else "LoRA adapter merged into the base weights")
    target = merged_dir(run.id)
    if _fresh(target, adapter):
        log(f"reusing the merged model at {target}")
        return target, note
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".merge.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one merge of a run at a time (an export and a server, two clicks)
        if _fresh(target, adapter):
            log(f"reusing the merged model at {target} (merged meanwhile)")
            return target, note
        base = resolve_model(run.base_model or "default")
        log(f"merging {adapter} into {base.display_name} ({base.path}) -> {target}")
        info = merge_lora(base.path, adapter, target, progress=progress, note=note)
    log(f"merged {info['merged_modules']} modules of {info['tensors']} tensors in {info['seconds']}s "
        f"({info['bytes'] / 1e6:.0f} MB)")
    return target, note


def _copy_out(src: Path, out_dir: str) -> Path:
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise JobError(f"{out} is not empty: choose a new or empty folder to export into")
    out.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, out, dirs_exist_ok=True)
    else:
        shutil.copy2(src, out / src.name)
    return out


def run_job(ctx):
    """Entry point of the export kind (core.runs.kinds)."""
    from core.runs.worker import JobResult, log

    cfg = ExportConfig.model_validate(ctx.config)
    run = trained_run(cfg.run_id)
    t0 = time.time()

    def progress(done: int, total: int) -> None:
        elapsed = time.time() - t0
        ctx.progress(step=done, max_steps=total, eta_s=elapsed / done * (total - done) if done else None)

    result: dict = {"format": cfg.format, "run_id": run.id}
    if cfg.format == "hub":
        from core.deploy.hub import push

        if cfg.push_adapter and run.method != "full":
            folder, what = Path(run.adapter_path), "adapter"
        else:
            folder, what = ensure_merged(run, progress, log)[0], "merged"
        pushed = push(run, folder, repo_id=cfg.repo_id or "", what=what, private=cfg.private, log=log)
        log(f"pushed to {pushed['url']}")
        return JobResult(final_metrics={**result, **pushed, "what": what, "seconds": round(time.time() - t0, 1)},
                         summary=f"run {run.id} pushed to {pushed['repo_id']}")
    if cfg.format == "adapter":
        if run.method == "full":
            raise JobError(f"run {run.id} is a full fine-tune: it has no adapter to keep separate; export "
                           "safetensors instead")
        output, note = Path(run.adapter_path), "the adapter kept separate, for multi-LoRA serving"
    else:
        merged, note = ensure_merged(run, progress, log)
        result["merged_dir"] = str(merged)
        output = merged
        if cfg.format == "gguf":
            from core.deploy.gguf import GGUFExportError, export_gguf
            from core.deploy.ollama import write_modelfile

            out_dir = ctx.dir / "gguf"
            out_dir.mkdir(parents=True, exist_ok=True)
            stem = (run.name or f"run-{run.id}").replace("/", "-").replace(" ", "-")
            target = out_dir / f"{stem}-{cfg.quant}.gguf"
            log(f"writing {target.name} ({cfg.quant.upper()})")
            try:
                info = export_gguf(merged, target, cfg.quant, progress=progress)
                modelfile = write_modelfile(target, merged, out_dir)
            except GGUFExportError as exc:
                raise JobError(str(exc)) from None
            result.update(gguf=info["path"], modelfile=str(modelfile), gguf_bytes=info["bytes"])
            output = out_dir
    if cfg.out_dir:
        output = _copy_out(output, cfg.out_dir)
    written = write_lineage(output if output.is_dir() else output.parent, ctx.job_id, output=str(output))
    if result.get("merged_dir") and Path(result["merged_dir"]) != output:
        write_lineage(Path(result["merged_dir"]), ctx.job_id, output=str(output))
    log(f"lineage written to {written}")
    result.update(output=str(output), note=note, seconds=round(time.time() - t0, 1),
                  bytes=paths.dir_size_bytes(output) if output.is_dir() else output.stat().st_size)
    log(f"export ready: {output}")
    return JobResult(final_metrics=result, fields={"output_dir": str(output)},
                     summary=f"{cfg.format} export of run {run.id} at {output}")


LINEAGE_FILE = "lineage.json"
LINEAGE_HEADING = "## Lineage"


def write_lineage(folder: Path, export_job_id: int, *, output: str = "") -> Path:
    """``lineage.json`` (core.lineage: the export, the run, its parent runs, the dataset version and its hash, what
    the data came from — ids, hashes, dates) and a "Lineage" section in the folder's README.md (added, or put in
    place of an older one). Returns the JSON file's path."""
    import json

    from core.lineage import lineage, lineage_markdown
    from storage.tables import utcnow

    lin = lineage("export", export_job_id)
    lin["node"]["status"] = "succeeded"  # written as its last step: the folder exists only when the export did
    if output:
        lin["node"]["output"] = output
    doc = {"written_at": utcnow().isoformat(timespec="seconds"), "export": lin["node"],
           "ancestors": lin["ancestors"]}
    path = folder / LINEAGE_FILE
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    readme = folder / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        text = f"# {folder.name}\n\nExported by Finetune Studio (export #{export_job_id}).\n"
    head, _, rest = text.partition(LINEAGE_HEADING)
    after = rest.split("\n## ", 1)
    tail = ("\n## " + after[1]) if rest and len(after) > 1 else ""
    section = (f"{LINEAGE_HEADING}\n\nWhat this model came from (also in `{LINEAGE_FILE}`):\n\n"
               f"{lineage_markdown(lin)}\n")
    readme.write_text(head.rstrip("\n") + "\n\n" + section + tail, encoding="utf-8")
    return path


def export_disk_bytes(run, fmt: str) -> int | None:
    """What an export of ``run`` writes to the workspace: the merged model (the base's safetensors, unless a fresh
    merge exists) and, for GGUF, a file no larger than that. None when the base's size is not known here."""
    if fmt == "adapter" or (run.method == "full" and fmt != "gguf"):
        return 0
    from core.models import ModelNotFoundError, resolve_model

    if run.method == "full":
        merged_bytes, need = paths.dir_size_bytes(Path(run.adapter_path)), 0
    else:
        try:
            base = resolve_model(run.base_model or "default", prepare_default=False)
        except ModelNotFoundError:
            return None
        if not base.is_local:
            return None
        merged_bytes = sum(f.stat().st_size for f in Path(base.path).glob("*.safetensors"))
        need = 0 if _fresh(merged_dir(run.id), Path(run.adapter_path)) else merged_bytes
    if fmt == "gguf":
        need += merged_bytes
    return need


def check_export_disk(run, fmt: str, free_bytes: int | None = None) -> None:
    """Refuse an export the workspace's disk cannot hold, before anything is written."""
    from core.config import get_settings
    from core.runs.errors import fmt_bytes

    need = export_disk_bytes(run, fmt)
    if not need:
        return
    where = get_settings().runs_dir
    free = paths.free_bytes(where) if free_bytes is None else free_bytes
    if need + 16 * 1024**2 <= free:
        return
    raise JobError(f"not enough disk space for this export: it writes about {fmt_bytes(need)} (the merged model"
                   + (" and the GGUF file" if fmt == "gguf" else "") + f") and {fmt_bytes(free)} is free in the "
                   f"workspace; free space under {where}" + ("" if fmt == "adapter" else
                                                             ", or export the adapter alone (format adapter)"))


def submit_export(cfg: ExportConfig | dict, *, start: bool = True, owner: str = ""):
    """Queue an export after checking what it points at (nothing is queued for bad input)."""
    from core import runs

    if isinstance(cfg, dict):
        cfg = ExportConfig.from_dict(cfg)
    run = trained_run(cfg.run_id)
    if cfg.format == "adapter" and run.method == "full":
        raise JobError(f"run {run.id} is a full fine-tune: it has no adapter to keep separate; export safetensors")
    if cfg.format == "hub":
        from core.space import in_space

        if in_space():  # a visitor must not publish with the Space owner's token
            raise JobError("a Space does not push to the Hugging Face Hub with its owner's token: export safetensors "
                           "or the adapter here, or run the studio on your own machine to push")
        from huggingface_hub.utils import get_token

        from core.deploy.hub import check_repo_id

        cfg = cfg.model_copy(update={"repo_id": check_repo_id(cfg.repo_id)})
        if not get_token():
            raise JobError("no Hugging Face token: set HF_TOKEN in the studio's environment (a write token), then "
                           "push again")
    check_export_disk(run, cfg.format)
    if cfg.out_dir:
        out = Path(cfg.out_dir).expanduser()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise JobError(f"{out} is not an empty folder: choose a new or empty folder to export into")
    name = cfg.name or f"export-run{run.id}-{cfg.format}" + (f"-{cfg.quant}" if cfg.format == "gguf" else "")
    return runs.submit("export", cfg.model_dump(mode="json"), start=start, name=name, base_model=run.base_model,
                       method=cfg.format, parent_run_id=run.id, owner=owner)


def push_for_visitor(run_id: int, repo_id: str, *, token: str | None, scope: str = "", private: bool = True,
                     push_adapter: bool = False) -> dict:
    """A Space visitor's push, with the OAuth token of their Hugging Face sign-in (``token``; ``scope`` its scopes),
    run in the request that asked for it: the token lives in that request's memory only — no job config, database
    row, file or log holds it (an export job would have to store it to hand it over). The merged model when a fresh
    safetensors export exists (else the adapter, asked for or not: the Space does not merge during a request)."""
    from core.deploy.hub import check_repo_id, push
    from core.space import can_push

    if not token:
        raise JobError("sign in with Hugging Face (the button at the top of the page) to push to your own account: "
                       "this Space never pushes with its owner's token")
    if not can_push(scope):
        raise JobError("your Hugging Face sign-in did not grant this Space the right to create repositories "
                       "(scope contribute-repos): sign out, sign in again and allow it")
    repo_id = check_repo_id(repo_id)
    run = trained_run(run_id)
    merged = merged_dir(run.id)
    if run.method == "full":
        folder, what = Path(run.adapter_path), "merged"
    elif not push_adapter and _fresh(merged, Path(run.adapter_path)):
        folder, what = merged, "merged"
    else:
        folder, what = Path(run.adapter_path), "adapter"
    out = push(run, folder, repo_id=repo_id, what=what, private=private, log=lambda _m: None, token=token)
    return {**out, "what": what}
