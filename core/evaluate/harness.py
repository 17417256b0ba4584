"""lm-evaluation-harness's named tasks (arc_easy, hellaswag, mmlu_*, …) for base and tuned, when their data can be had.

The harness downloads each task's dataset from the Hugging Face Hub. On a machine that cannot reach it, the job ends
with exactly what is missing (the dataset id and config the task reads) and the way around it: import the questions
as a file in the Data tab and use multiple-choice mode, which scores them the way the harness does.
"""
from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from pathlib import Path

from core.evaluate import metrics as M
from core.evaluate.config import EvalConfig
from core.evaluate.sides import resolve_sides, speed, store_evaluation
from core.models import resolve_model
from core.runs.errors import JobError
from core.runs.worker import JobContext, JobResult, log

_NETWORK_WORDS = ("offline", "connection", "couldn't reach", "could not reach", "resolve", "max retries", "timed out",
                  "name or service not known", "network", "localentrynotfound", "cannot find the requested files",
                  "hf_hub_offline", "not reachable", "unreachable", "no such file", "doesn't exist on the hub")


@lru_cache(maxsize=1)
def _task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()


INDEX_FIELDS = ("task", "dataset_path", "dataset_name", "output_type")  # what task_info reads of a task's config


def index_cache_path() -> Path:
    """Where the harness's task index is kept between processes: the user's cache folder, one file per installed
    lm-eval (its version and folder)."""
    import hashlib

    import lm_eval

    key = hashlib.sha256(f"{lm_eval.__version__}\0{Path(lm_eval.__file__).parent}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "finetune-studio" / f"lm-eval-{lm_eval.__version__}-tasks-{key}.json"


@lru_cache(maxsize=1)
def task_index() -> dict[str, list]:
    """Every task and group name the harness knows -> its config's ``INDEX_FIELDS``. Building it means reading the
    harness's ~15,000 task files (~8 s, once per process); the result is kept in ``index_cache_path()``, so that
    checking a task name (a submit, the CLI) takes a file read after the first time. A cache that cannot be read or
    written is rebuilt or skipped, never trusted half-written."""
    path = index_cache_path()
    try:
        index = json.loads(path.read_text())
        if isinstance(index, dict) and index and all(isinstance(v, list) and len(v) == len(INDEX_FIELDS)
                                                     for v in index.values()):
            return index
    except (OSError, ValueError):
        pass
    index = {}
    for name, entry in _task_manager().task_index.items():
        cfg = dict(getattr(entry, "cfg", None) or {})
        index[name] = [v if isinstance(v := cfg.get(f), str) else None for f in INDEX_FIELDS]
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(index))
        os.replace(tmp, path)  # whole or not at all
    except OSError:  # a read-only home: checked from the harness each time
        tmp.unlink(missing_ok=True)
    return index


def task_info(task: str) -> dict:
    """The task's dataset (what it downloads) and output type, without downloading anything."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise JobError("lm-evaluation-harness is not installed (pip install lm-eval==0.4.13)") from None
    index = task_index()
    entry = index.get(task)
    if entry is None:
        close = sorted(t for t in index if task.lower() in t.lower())[:8]
        hint = f" (did you mean {', '.join(close)}?)" if close else " (e.g. arc_easy, hellaswag, mmlu_anatomy)"
        raise JobError(f"lm-evaluation-harness has no task '{task}'{hint}")
    cfg = dict(zip(INDEX_FIELDS, entry))
    return {"task": task, "dataset_path": cfg["dataset_path"], "dataset_name": cfg["dataset_name"],
            "output_type": cfg["output_type"], "is_group": cfg["task"] != task and not cfg["dataset_path"]}


def missing_data_message(info: dict, exc: BaseException) -> str:
    ds = info.get("dataset_path") or "its dataset"
    if info.get("dataset_name"):
        ds += f" (config '{info['dataset_name']}')"
    return (f"lm-eval task '{info['task']}' needs the dataset {ds} from the Hugging Face Hub, which this machine "
            f"cannot reach ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). Run it on a "
            "machine with Hub access (or with the dataset in its Hugging Face cache), or import the questions as a "
            "file in the Data tab and evaluate them in multiple-choice mode, which scores them the way the harness "
            "does.")


def check_task_data(info: dict) -> None:
    """Load the task, and so its dataset (from the Hub, or the Hugging Face cache), before any model is: a machine
    that cannot reach it fails in seconds saying what is missing, not after loading the base model first (the harness
    loads the model, then the tasks)."""
    log(f"lm-eval {info['task']}: reading the task's data ({info.get('dataset_path') or 'its dataset'})")
    try:
        _task_manager().load([info["task"]])
    except Exception as exc:
        if _is_network_error(exc):
            raise JobError(missing_data_message(info, exc)) from None
        raise


def _is_network_error(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = f"{type(exc).__name__}: {exc}".lower()
        if any(w in text for w in _NETWORK_WORDS) or isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _scores(result: dict, task: str) -> dict:
    """{"acc": …, "acc_norm": …, …} from the harness's results for one task (",none" filter suffix dropped)."""
    out = {}
    for key, value in (result.get("results", {}).get(task) or {}).items():
        if not isinstance(value, (int, float)) or "," not in key:
            continue
        metric, _, filt = key.partition(",")
        if filt == "none" and not metric.endswith("_stderr"):
            out[metric] = float(value)
    return out


def run_lm_eval_task(ctx: JobContext, cfg: EvalConfig) -> JobResult:
    from lm_eval import simple_evaluate

    task = (cfg.lm_eval_task or "").strip()
    info = task_info(task)
    check_task_data(info)
    base_src, tuned_src = resolve_sides(cfg)
    t0 = time.time()
    sides = {}
    for n, (side, src) in enumerate((("base", base_src), ("tuned", tuned_src))):
        args = f"pretrained={resolve_model(src.base).path},dtype=float32"
        if src.adapter:
            args += f",peft={src.adapter}"
        ctx.progress(step=n, max_steps=2, eta_s=None)
        log(f"lm-eval {task} on the {side} model ({src.label})")
        try:
            result = simple_evaluate(model="hf", model_args=args, tasks=[task], limit=cfg.limit,
                                     batch_size=cfg.batch_size, device="cpu" if not _cuda() else "cuda",
                                     log_samples=False)
        except Exception as exc:
            if _is_network_error(exc):
                raise JobError(missing_data_message(info, exc)) from None
            raise
        sides[side] = _scores(result or {}, task)
        sides[side]["n"] = int(((result or {}).get("n-samples", {}).get(task) or {}).get("effective", 0) or 0)
    ctx.progress(step=2, max_steps=2, eta_s=0.0)
    metrics = {"base": sides["base"], "tuned": sides["tuned"], "delta": M.delta(sides["base"], sides["tuned"]),
               "notes": [f"lm-evaluation-harness task {task} ({info.get('dataset_path')}), limit {cfg.limit}, "
                         f"{time.time() - t0:.0f}s (each side's model load included in the speed)"],
               **speed(sides["base"].get("n", 0) + sides["tuned"].get("n", 0), time.time() - t0)}
    log(json.dumps(metrics)[:500])
    return store_evaluation(ctx, cfg, "lm_eval", base_src, tuned_src, task, "harness", [], metrics)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
