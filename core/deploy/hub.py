"""Push a finished run to the Hugging Face Hub with a model card generated from the run.

What is pushed: the merged model folder (``runs/<id>/merged``, from a safetensors export) or the adapter alone.
The model card (README.md) says what the model is: base model, data, method and settings, how training went, the
newest evaluation's metrics base vs tuned when one exists, and how to load it.

The token comes from the environment (``HF_TOKEN``, or huggingface_hub's own login); it is passed to the Hub client
only — never stored in a job's config, the database, a log or the page. Offline, or with a rejected token, the job
fails with one line that says which. Runs as the ``export`` job's ``hub`` format (core.deploy.export), so a large
upload is a job like any other. On a Space a visitor signed in with Hugging Face pushes with their own OAuth token
instead, in their request (core.deploy.export.push_for_visitor): never with the Space owner's.
"""
from __future__ import annotations

import re
from pathlib import Path

from core.runs.errors import JobError

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
SKIP_FILES = [".fts-complete", "fts_merge.json", "train_config.yaml", "checkpoint-*", "*.partial*", "lineage.json"]


def check_repo_id(repo_id: str | None) -> str:
    repo_id = (repo_id or "").strip()
    if not REPO_ID.match(repo_id):
        raise JobError(f"'{repo_id}' is not a Hub repository id: use owner/name (e.g. my-org/support-json-lora)")
    return repo_id


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def model_card(run, *, what: str, repo_id: str) -> str:
    """README.md for the pushed model, from the run's config, results and newest evaluation."""
    from core.evaluate.results import latest_for_runs

    cfg = run.config or {}
    fm = run.final_metrics or {}
    base = run.base_model or "default"
    base_id = "HuggingFaceTB/SmolLM2-135M-Instruct" if base == "default" else base
    tags = ["finetune-studio", run.method] + (["lora", "peft"] if run.method in ("lora", "qlora") else [])
    front = ["---", f"base_model: {base_id}", "library_name: " + ("peft" if what == "adapter" else "transformers"),
             "tags:"] + [f"- {t}" for t in dict.fromkeys(tags)] + ["---", ""]
    lines = [f"# {repo_id.split('/')[-1]}", "",
             f"Fine-tuned from **{base_id}** with Finetune Studio ({run.method.upper()}, run #{run.id} "
             f"'{run.name}'). This repository holds " + ("the LoRA adapter only." if what == "adapter"
                                                         else "the merged model (the adapter folded into the base)."),
             "", "## Training", "", "| setting | value |", "|---|---|"]
    for key in ("dataset", "method", "max_steps", "num_epochs", "batch_size", "grad_accum", "learning_rate",
                "lr_scheduler", "max_length", "lora_r", "lora_alpha", "lora_target_modules", "gradient_checkpointing"):
        if key in cfg:
            lines.append(f"| {key} | {_fmt(cfg[key])} |")
    if fm:
        lines += ["", f"Trained {fm.get('global_step', '?')} steps on {fm.get('dataset_rows', '?')} rows "
                      f"({fm.get('dataset_loss_tokens', '?')} loss tokens); final training loss "
                      f"{_fmt(fm.get('train_loss'))}."]
    ev = latest_for_runs([run.id]).get(run.id)
    if ev is not None:
        m = ev.metrics or {}
        lines += ["", "## Evaluation", "", f"On `{ev.dataset_ref}` [{ev.split}], {ev.n} examples "
                  f"({ev.kind}), base vs this model:", "", "| metric | base | tuned | delta |", "|---|---|---|---|"]
        for k, v in (m.get("base") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n":
                lines.append(f"| {k} | {_fmt(v)} | {_fmt((m.get('tuned') or {}).get(k))} | "
                             f"{_fmt((m.get('delta') or {}).get(k))} |")
    from core.lineage import lineage, lineage_markdown

    lines += ["", "## Lineage", "", "What this model came from (Finetune Studio ids, content hashes, dates; also in "
              "`lineage.json`):", "", lineage_markdown(lineage("run", run.id))]
    lines += ["", "## Use", "", "```python"]
    if what == "adapter":
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{base_id}")',
                  f'model = PeftModel.from_pretrained(base, "{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
    lines += ["```", ""]
    return "\n".join(front + lines)


def lineage_json(run) -> str:
    """The run's lineage (core.lineage) as the ``lineage.json`` pushed with the model card."""
    import json

    from core.lineage import lineage
    from storage.tables import utcnow

    lin = lineage("run", run.id)
    return json.dumps({"written_at": utcnow().isoformat(timespec="seconds"), "run": lin["node"],
                       "ancestors": lin["ancestors"]}, indent=2, ensure_ascii=False) + "\n"


def push(run, folder: Path, *, repo_id: str, what: str, private: bool = True, log=print,
         token: str | None = None) -> dict:
    """Create (or reuse) the repository and upload the folder and the model card. Returns {"url", "repo_id"}.
    ``token``: whose token pushes (a Space visitor's own); None: this studio's environment (``HF_TOKEN``)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_token

    repo_id = check_repo_id(repo_id)
    token = token or get_token()
    if not token:
        raise JobError("no Hugging Face token: set HF_TOKEN in the studio's environment (a write token), then push "
                       "again")
    api = HfApi(token=token)
    card = model_card(run, what=what, repo_id=repo_id)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        log(f"uploading {folder} to {repo_id}")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), ignore_patterns=SKIP_FILES,
                          commit_message=f"Finetune Studio: run #{run.id} ({what})")
        api.upload_file(path_or_fileobj=card.encode("utf-8"), path_in_repo="README.md", repo_id=repo_id,
                        commit_message="Model card")
        api.upload_file(path_or_fileobj=lineage_json(run).encode("utf-8"), path_in_repo="lineage.json",
                        repo_id=repo_id, commit_message="Lineage")
    except Exception as exc:  # noqa: BLE001 - worded below; the token is never part of the message
        raise JobError(_push_error(exc, repo_id)) from None
    return {"url": str(url), "repo_id": repo_id}


def _push_error(exc: BaseException, repo_id: str) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return (f"the Hugging Face Hub refused the token for {repo_id} (HTTP {status}): use a token with write "
                "access to that namespace")
    text = f"{type(exc).__name__}: {exc}".lower()
    if status is None and any(w in text for w in ("connect", "resolve", "timed out", "timeout", "network",
                                                   "offline", "name or service")):
        return (f"the Hugging Face Hub is unreachable from this machine, so {repo_id} was not pushed "
                f"({type(exc).__name__})")
    return f"pushing {repo_id} failed: {type(exc).__name__}: {str(exc)[:300]}"
