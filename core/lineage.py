"""Lineage: what every dataset, run, evaluation, export and deployment came from, and what was made from it.

The chain (issue 28)::

    Playground votes / an evaluation's corrections → dataset (content hash, version)
    dataset → training run (the hash it trained on, recorded at submit) → run continued from it (continue-as)
    run → evaluations → datasets of corrections → …
    run → exports (merged folder, GGUF, adapter, Hub) → deployments;  run → deployments

Nothing new is stored to know it: a run's dataset id and hash (``runs.dataset_ref`` / ``dataset_hash``) and parent
(``parent_run_id``), an evaluation's run and dataset, an export job's run (its parent) and output, a deployment's run
and folder, a preference dataset's ``meta["feedback"]`` (vote ids or the evaluation). :func:`lineage` walks it both
ways from any of them; :func:`dependents` says in one sentence what a delete would leave without its source.

Where it sits: just above the runs core, reading the storage tables directly. The export job and the Hub model card
(core.deploy) write it, the deletion paths (core.deletion, the CLI, the Train tab) warn with it, and the data
floor may ask it too; a module above train | deploy could not be imported by them.
"""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import or_, select

from core.config import db_session
from storage import Dataset, Deployment, Evaluation, Run, Vote

KINDS = ("dataset", "run", "evaluation", "export", "deployment")
MAX_DEPTH = 8


class LineageError(ValueError):
    """An unknown kind or id; the message says which."""


# ---- nodes -----------------------------------------------------------------------------------------------------------
def _when(dt: datetime | None) -> str:
    if dt is None:
        return ""
    dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _dataset_versions(session, ds: Dataset) -> tuple[int, int]:
    """(this version's number, how many versions) among the stored datasets with the same rows (their content hash
    before a split suffix)."""
    digest = (ds.content_hash or "").partition("+")[0]
    if not digest:
        return 1, 1
    ids = [d.id for d in session.exec(select(Dataset).where(Dataset.content_hash.like(f"{digest}%"))
                                      .order_by(Dataset.id)).all()]
    return (ids.index(ds.id) + 1 if ds.id in ids else 1), max(1, len(ids))


def _dataset_node(session, ds: Dataset) -> dict:
    version, versions = _dataset_versions(session, ds)
    return {"type": "dataset", "id": ds.id, "name": ds.name, "kind": ds.kind, "rows": ds.rows,
            "hash": ds.content_hash, "version": version, "versions": versions, "source": ds.source,
            "created_at": _when(ds.created_at)}


def _run_node(run: Run) -> dict:
    cfg = run.config or {}
    if run.kind == "export":
        fm = run.final_metrics or {}
        return {"type": "export", "id": run.id, "name": run.name, "format": cfg.get("format") or run.method,
                "status": str(run.status), "run_id": cfg.get("run_id") or run.parent_run_id,
                "output": fm.get("output") or (run.output_dir if str(run.status) == "succeeded" else ""),
                "merged_dir": fm.get("merged_dir") or "", "repo_id": fm.get("repo_id") or cfg.get("repo_id") or "",
                "created_at": _when(run.created_at), "finished_at": _when(run.finished_at)}
    return {"type": "run", "id": run.id, "name": run.name, "status": str(run.status),
            "objective": cfg.get("objective", "sft"), "method": run.method, "base_model": run.base_model,
            "dataset": run.dataset_ref, "dataset_hash": run.dataset_hash or "", "parent_run_id": run.parent_run_id,
            "steps": f"{run.step}/{run.max_steps}", "attempts": run.attempt, "adapter": run.adapter_path or "",
            "created_at": _when(run.created_at), "finished_at": _when(run.finished_at)}


def _evaluation_node(ev: Evaluation) -> dict:
    return {"type": "evaluation", "id": ev.id, "name": ev.name, "kind": ev.kind, "run_id": ev.run_id,
            "job_id": ev.job_id, "dataset": ev.dataset_ref, "split": ev.split, "n": ev.n,
            "headline": ev.headline, "base": ev.headline_base, "tuned": ev.headline_tuned,
            "created_at": _when(ev.created_at)}


def _deployment_node(dep: Deployment) -> dict:
    return {"type": "deployment", "id": dep.id, "target": dep.target, "status": dep.status, "run_id": dep.run_id,
            "model_ref": dep.model_ref, "model_dir": dep.model_dir, "url": dep.url,
            "created_at": _when(dep.created_at)}


def _votes_node(votes: list[Vote], ids: list[int]) -> dict:
    models = sorted({m for v in votes for m in (v.model_a, v.model_b) if m})
    dates = [v.created_at for v in votes]
    return {"type": "votes", "ids": list(ids), "n": len(ids), "found": len(votes), "models": models,
            "created_at": _when(min(dates)) if dates else "", "last_at": _when(max(dates)) if dates else ""}


# ---- one step up / down ----------------------------------------------------------------------------------------------
def _get(session, kind: str, key) -> Any:
    if kind == "dataset":
        return session.get(Dataset, key)
    if kind in ("run", "export"):
        run = session.get(Run, key)
        want = "export" if kind == "export" else "train"
        return run if run is not None and run.kind == want else None
    if kind == "evaluation":
        return session.get(Evaluation, key)
    if kind == "deployment":
        return session.get(Deployment, key)
    return None


def _node(session, kind: str, obj) -> dict:
    if kind == "dataset":
        return _dataset_node(session, obj)
    if kind in ("run", "export"):
        return _run_node(obj)
    if kind == "evaluation":
        return _evaluation_node(obj)
    return _deployment_node(obj)


def _dataset_ref_parent(session, ref: str, recorded_hash: str = "") -> tuple[str, Any] | dict | None:
    """What a run's or an evaluation's dataset reference points at: ("dataset", row), or a leaf node for a file or a
    dataset deleted since (with the hash recorded when the run was queued)."""
    ref = str(ref or "").strip()
    if not ref:
        return None
    if ref.isdigit():
        ds = session.get(Dataset, int(ref))
        if ds is not None:
            return ("dataset", ds)
        return {"type": "dataset", "id": int(ref), "missing": True, "hash": recorded_hash}
    return {"type": "file", "path": ref, "hash": recorded_hash}


def _parents(session, kind: str, obj) -> list[tuple[str, str, Any]]:
    """[(relation, kind, row or leaf node)] one step up."""
    out: list[tuple[str, str, Any]] = []
    if kind == "run":
        got = _dataset_ref_parent(session, obj.dataset_ref or (obj.config or {}).get("dataset", ""),
                                  obj.dataset_hash or "")
        if isinstance(got, tuple):
            out.append(("trained on", *got))
        elif got:
            out.append(("trained on", got["type"], got))
        if obj.parent_run_id:
            parent = session.get(Run, obj.parent_run_id)
            if parent is not None:
                out.append(("continued from", "run", parent))
            else:
                out.append(("continued from", "run", {"type": "run", "id": obj.parent_run_id, "missing": True}))
        elif (obj.config or {}).get("init_adapter"):
            out.append(("continued from", "folder", {"type": "folder", "path": obj.config["init_adapter"]}))
        out.append(("base model", "model", {"type": "model", "ref": obj.base_model or "default"}))
    elif kind == "export":
        run_id = (obj.config or {}).get("run_id") or obj.parent_run_id
        run = session.get(Run, run_id) if run_id else None
        if run is not None:
            out.append(("exported from", "run", run))
        elif run_id:
            out.append(("exported from", "run", {"type": "run", "id": run_id, "missing": True}))
    elif kind == "evaluation":
        run = session.get(Run, obj.run_id) if obj.run_id else None
        if run is not None:
            out.append(("evaluated", "run", run))
        elif obj.run_id:
            out.append(("evaluated", "run", {"type": "run", "id": obj.run_id, "missing": True}))
        ref = obj.dataset_ref or ""
        if ref.isdigit():
            got = _dataset_ref_parent(session, ref)
            if isinstance(got, tuple):
                out.append(("on the rows of", *got))
            elif got:
                out.append(("on the rows of", got["type"], got))
    elif kind == "deployment":
        export = _export_for_folder(session, obj.model_dir, obj.run_id)
        if export is not None:
            out.append(("serves the output of", "export", export))
        elif obj.run_id:
            run = session.get(Run, obj.run_id)
            out.append(("serves", "run", run if run is not None else
                        {"type": "run", "id": obj.run_id, "missing": True}))
        else:
            out.append(("serves", "model", {"type": "model", "ref": obj.model_ref or obj.model_dir}))
    elif kind == "dataset":
        fb = (obj.meta or {}).get("feedback") or {}
        if fb.get("from") == "votes":
            ids = [int(i) for i in fb.get("vote_ids") or []]
            votes = list(session.exec(select(Vote).where(Vote.id.in_(ids)))) if ids else []
            out.append(("made from", "votes", _votes_node(votes, ids)))
        elif fb.get("from") == "evaluation" and fb.get("evaluation_id") is not None:
            ev = session.get(Evaluation, int(fb["evaluation_id"]))
            out.append(("corrections of", "evaluation", ev if ev is not None else
                        {"type": "evaluation", "id": int(fb["evaluation_id"]), "missing": True}))
    return out


def _same_dir(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def _export_outputs(run: Run) -> list[str]:
    fm = run.final_metrics or {}
    return [p for p in (fm.get("output"), fm.get("merged_dir")) if p]


def _export_for_folder(session, folder: str, run_id: int | None):
    """The newest succeeded export whose output (or merged folder) is ``folder``: a deployment of it came from it."""
    if not folder:
        return None
    q = select(Run).where(Run.kind == "export")
    if run_id:
        q = q.where(Run.parent_run_id == run_id)
    for run in reversed(list(session.exec(q.order_by(Run.id)).all())):
        if str(run.status) == "succeeded" and any(_same_dir(p, folder) for p in _export_outputs(run)):
            return run
    return None


def _children(session, kind: str, obj) -> list[tuple[str, str, Any]]:
    """[(relation, kind, row or leaf node)] one step down."""
    out: list[tuple[str, str, Any]] = []
    if kind == "dataset":
        for run in session.exec(select(Run).where(Run.kind == "train", Run.dataset_ref == str(obj.id))
                                .order_by(Run.id)).all():
            out.append(("trained", "run", run))
        for ev in session.exec(select(Evaluation).where(Evaluation.dataset_ref == str(obj.id))
                               .order_by(Evaluation.id)).all():
            out.append(("evaluated on it", "evaluation", ev))
    elif kind == "run":
        kids = list(session.exec(select(Run).where(Run.parent_run_id == obj.id).order_by(Run.id)).all())
        for run in kids:
            if run.kind == "train":
                out.append(("continued as", "run", run))
        for ev in session.exec(select(Evaluation).where(Evaluation.run_id == obj.id).order_by(Evaluation.id)).all():
            out.append(("evaluated in", "evaluation", ev))
        exports = [r for r in kids if r.kind == "export"]
        for run in exports:
            out.append(("exported as", "export", run))
        for dep in session.exec(select(Deployment).where(Deployment.run_id == obj.id).order_by(Deployment.id)).all():
            if _export_for_folder(session, dep.model_dir, obj.id) is None:
                out.append(("served by", "deployment", dep))
        out.extend(("voted on, made into", "dataset", ds) for ds in _datasets_from_votes_on(session, f"run:{obj.id}"))
    elif kind == "evaluation":
        for ds in session.exec(select(Dataset).where(Dataset.kind == "preference").order_by(Dataset.id)).all():
            fb = (ds.meta or {}).get("feedback") or {}
            if fb.get("from") == "evaluation" and str(fb.get("evaluation_id")) == str(obj.id):
                out.append(("corrected into", "dataset", ds))
    elif kind == "export":
        outputs = _export_outputs(obj)
        run_id = (obj.config or {}).get("run_id") or obj.parent_run_id
        q = select(Deployment).order_by(Deployment.id)
        for dep in session.exec(q).all():
            if any(_same_dir(dep.model_dir, p) for p in outputs):
                newest = _export_for_folder(session, dep.model_dir, dep.run_id or run_id)
                if newest is None or newest.id == obj.id:
                    out.append(("served by", "deployment", dep))
    return out


def _datasets_from_votes_on(session, model_key: str) -> list[Dataset]:
    vote_ids = set(session.exec(select(Vote.id).where(or_(Vote.model_a == model_key, Vote.model_b == model_key)))
                   .all())
    if not vote_ids:
        return []
    out = []
    for ds in session.exec(select(Dataset).where(Dataset.kind == "preference").order_by(Dataset.id)).all():
        fb = (ds.meta or {}).get("feedback") or {}
        if fb.get("from") == "votes" and vote_ids & {int(i) for i in fb.get("vote_ids") or []}:
            out.append(ds)
    return out


# ---- the walk --------------------------------------------------------------------------------------------------------
def _key(kind: str, obj) -> tuple:
    return (kind, obj.get("id") if isinstance(obj, dict) else obj.id)


def _walk(session, kind: str, obj, step, seen: set, depth: int, name: str) -> list[dict]:
    out = []
    for relation, child_kind, child in step(session, kind, obj):
        if isinstance(child, dict):  # a leaf: a file, a folder, a base model, votes, something deleted since
            out.append({"relation": relation, "node": child, name: []})
            continue
        key = _key(child_kind, child)
        node = _node(session, child_kind, child)
        if key in seen or depth <= 1:
            out.append({"relation": relation, "node": node, name: [], "more": key not in seen})
            continue
        seen.add(key)
        out.append({"relation": relation, "node": node,
                    name: _walk(session, child_kind, child, step, seen, depth - 1, name)})
    return out


def parse_kind(kind: str) -> str:
    kind = (kind or "").strip().lower()
    if kind not in KINDS:
        raise LineageError(f"unknown kind '{kind}': one of {', '.join(KINDS)}")
    return kind


def lineage(kind: str, key: int | str, depth: int = MAX_DEPTH) -> dict:
    """``{"node", "ancestors": [{"relation", "node", "ancestors": [...]}], "descendants": [{"relation", "node",
    "descendants": [...]}]}`` for a dataset, training run, evaluation, export (job id) or deployment."""
    kind = parse_kind(kind)
    try:
        key = int(str(key).strip())
    except ValueError:
        raise LineageError(f"{kind} id must be a number, got {key!r}") from None
    with db_session() as session:
        obj = _get(session, kind, key)
        if obj is None:
            what = {"run": "training run", "export": "export job"}.get(kind, kind)
            raise LineageError(f"{what} {key} not found")
        root = (kind, key)
        return {"node": _node(session, kind, obj),
                "ancestors": _walk(session, kind, obj, _parents, {root}, depth, "ancestors"),
                "descendants": _walk(session, kind, obj, _children, {root}, depth, "descendants")}


# ---- in words --------------------------------------------------------------------------------------------------------
def short_hash(h: str | None) -> str:
    h = h or ""
    digest, plus, split = h.partition("+")
    return (digest[:12] + (f"+{split[:8]}" if plus else "")) if h else ""


def node_line(node: dict) -> str:
    """One node in words: its kind and id, name, what matters about it, its hash and its date."""
    t = node.get("type")
    if node.get("missing"):
        extra = f" · hash {short_hash(node['hash'])}" if node.get("hash") else ""
        return f"{t} #{node.get('id')} (deleted since){extra}"
    if t == "dataset":
        return (f"dataset #{node['id']} '{node['name']}' v{node['version']} of {node['versions']} · {node['kind']}, "
                f"{node['rows']} rows · hash {short_hash(node['hash'])} · {node['created_at']}")
    if t == "run":
        head = (f"run #{node['id']} '{node['name']}' · {node['objective']} {node['method']}, {node['status']}, "
                f"step {node['steps']}")
        if node.get("attempts", 0) > 1:
            head += f", {node['attempts']} attempts (resumed)"
        if node.get("dataset_hash"):
            head += f" · data hash {short_hash(node['dataset_hash'])}"
        return head + f" · {node['created_at']}"
    if t == "export":
        where = node.get("repo_id") if node.get("format") == "hub" else node.get("output")
        return (f"export #{node['id']} ({node['format']}, {node['status']})" + (f" → {where}" if where else "")
                + (f" · merged {node['merged_dir']}" if node.get("merged_dir") and node["merged_dir"] != where
                   else "") + f" · {node['finished_at'] or node['created_at']}")
    if t == "evaluation":
        score = ""
        if node.get("headline") and node.get("tuned") is not None:
            base = "-" if node.get("base") is None else f"{node['base']:.3f}"
            score = f" · {node['headline']} {base} → {node['tuned']:.3f}"
        on = f"dataset #{node['dataset']}" if str(node.get("dataset") or "").isdigit() else node["dataset"]
        on = f"run #{on[4:]}'s held-out rows" if str(on).startswith("run:") else on
        return (f"evaluation #{node['id']} ({node['kind']}) on {on} [{node['split']}], {node['n']} rows"
                + score + f" · {node['created_at']}")
    if t == "deployment":
        return (f"deployment #{node['id']} ({node['target']}, {node['status']})"
                + (f" at {node['url']}" if node.get("url") else "") + f" · {node['created_at']}")
    if t == "votes":
        ids = node["ids"]
        shown = ", ".join(f"#{i}" for i in ids[:8]) + (f" … ({len(ids)} in all)" if len(ids) > 8 else "")
        return (f"{node['n']} Playground votes {shown} on {', '.join(node['models']) or '?'} · "
                f"{node['created_at']}" + (f" to {node['last_at']}" if node['last_at'] != node['created_at'] else ""))
    if t == "file":
        return f"data file {node['path']}" + (f" · hash {short_hash(node['hash'])}" if node.get("hash") else "")
    if t == "folder":
        return f"adapter folder {node['path']}"
    if t == "model":
        return f"model {node['ref']}"
    return str(node)


def _tree_lines(items: list[dict], name: str, indent: int) -> list[str]:
    lines = []
    for item in items:
        more = " …" if item.get("more") else ""
        lines.append("  " * indent + f"- {item['relation']}: {node_line(item['node'])}{more}")
        lines.extend(_tree_lines(item.get(name) or [], name, indent + 1))
    return lines


def lineage_text(lin: dict) -> str:
    """The lineage in plain text (shown as text: names come from people): the node, where it came from, what was
    made from it."""
    lines = [node_line(lin["node"]), "", "Came from:"]
    lines += _tree_lines(lin["ancestors"], "ancestors", 1) or ["  (nothing recorded)"]
    lines += ["", "Made from it:"]
    lines += _tree_lines(lin["descendants"], "descendants", 1) or ["  (nothing yet)"]
    return "\n".join(lines)


def lineage_markdown(lin: dict) -> str:
    """The lineage as a Markdown section (an export's README, a Hub model card): the chain up, with ids, hashes and
    dates. Names are people's text: backticked, so they render as text."""
    def esc(s: str) -> str:
        return s.replace("`", "'")

    lines = [f"- this: `{esc(node_line(lin['node']))}`"]

    def up(items, indent):
        for item in items:
            lines.append("  " * indent + f"- {item['relation']}: `{esc(node_line(item['node']))}`")
            up(item.get("ancestors") or [], indent + 1)

    up(lin["ancestors"], 0)
    return "\n".join(lines)


_PLURAL = {"evaluation": "evaluations", "export": "exports", "deployment": "deployments", "run": "runs",
           "dataset": "datasets"}


def _count(n: int, what: str) -> str:
    if n == 1:
        return f"a {what}" if what[0] not in "aeiou" else f"an {what}"
    return f"{n} {_PLURAL.get(what, what + 's')}"


def dependents(kind: str, key: int | str) -> dict:
    """What came from it: ``{"counts": {what: n}, "ids": {what: [ids]}, "message": str}`` — its direct descendants
    and the deployments of its exports; the message names them ("run 5 has 2 evaluations (#7, #9), an export (#8)
    and a deployment (#2) that came from it"; "" when nothing did)."""
    kind = parse_kind(kind)
    lin = lineage(kind, key, depth=2)
    ids: dict[str, list[int]] = {}
    for item in lin["descendants"]:
        node = item["node"]
        label = "continued run" if item["relation"] == "continued as" else node["type"]
        ids.setdefault(label, []).append(node["id"])
        if node["type"] == "export":
            for sub in item.get("descendants") or []:
                ids.setdefault(sub["node"]["type"], []).append(sub["node"]["id"])
    order = ("evaluation", "export", "deployment", "continued run", "run", "dataset")
    parts = [f"{_count(len(ids[k]), k)} (#{', #'.join(map(str, ids[k]))})" for k in order if ids.get(k)]
    message = ""
    if parts:
        said = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        message = f"{kind} {lin['node']['id']} has {said} that came from it"
    return {"counts": {k: len(v) for k, v in ids.items()}, "ids": ids, "message": message}
