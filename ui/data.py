"""Data tab: bring a dataset (upload / path / Hub id), check it, store it; preview rows with the loss mask; token stats.

Only binds components to ``core.data`` calls: no ML, no SQL here. Handlers are module-level functions so tests can
call them without a browser.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import gradio as gr
import pandas as pd

from core.data import (
    FORMATS,
    PROBLEM_CODES,
    DatasetError,
    compute_token_stats,
    datasets_table,
    get_dataset,
    import_dataset,
    prepare_dataset,
    preview_row,
)
from core.data.formats import CANONICAL_FIELDS
from core.data.jobs import IN_PAGE_ROWS, measure_source, needs_a_job, submit_import
from core.data.templates import OWN, template_menu
from core.runs import JobError
from ui.common import fmt_splits, is_mine, md_text, mine_box, owner_filter, user_of

FILE_TYPES = [".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt"]
TABLE_HEADERS = ["id", "name", "format", "kind", "rows", "train/val/test", "train tokens", "created", "owner"]
MASK_COLORS = {"trained": "#22c55e", "masked": "#cbd5e1", "truncated": "#ef4444",
               "question": "#e2e8f0", "answer": "#3b82f6",  # multiple-choice rows (for Evaluate)
               "chosen": "#22c55e", "rejected": "#f97316"}  # preference pairs (for DPO / ORPO)
DEFAULT_DROP = [c for c in PROBLEM_CODES if c not in ("non_string_content", "unfilled_placeholder")]


# ------------------------------------------------------------------------------------------------------- helpers
def _source(upload, path: str) -> str:
    """The file to read: an upload, else the typed path / Hub id (a server path only where this studio allows it)."""
    if upload:
        return upload if isinstance(upload, str) else getattr(upload, "name", str(upload))
    return (path or "").strip()  # core.data's read_source passes it through core.access's resolver


def _pairs(df) -> dict[str, str]:
    """Rows of a two-column table (key, value) -> dict, skipping blanks."""
    if df is None:
        return {}
    rows = df.values.tolist() if isinstance(df, pd.DataFrame) else list(df)
    out = {}
    for r in rows:
        if len(r) >= 2 and str(r[0] or "").strip() and str(r[1] or "").strip():
            out[str(r[0]).strip()] = str(r[1]).strip()
    return out


def problems_markdown(problems: list[dict]) -> str:
    if not problems:
        return "No problems found."
    lines = ["| problem | rows | first rows | example | what happens |", "|---|---:|---|---|---|"]
    for p in problems:
        more = "…" if p["count"] > len(p["rows"]) else ""
        example = md_text(p["examples"][0] if p["examples"] else "", 120)
        action = "dropped (cannot be used)" if p["fatal"] else p["action"]
        lines.append(f"| {p['title']} (`{p['code']}`) | {p['count']} | {', '.join(map(str, p['rows']))}{more} "
                     f"| {example} | {action} |")
    return "\n".join(lines)


def stats_markdown(st: dict | None, kind: str | None = None) -> str:
    if not st:
        return "No token statistics yet."
    if kind == "multiple_choice":
        return (f"**{st['total_tokens']:,} tokens** in {st['rows']:,} train rows — each question with its lettered "
                f"options and answer (tokenizer: `{st['model']}`)  \n"
                f"min {st['min']} · mean {st['mean']} · p50 {st['p50']} · p95 {st['p95']} · max {st['max']} tokens "
                "· scored in Evaluate, never trained on")
    return (f"**{st['total_tokens']:,} training tokens** in {st['rows']:,} train rows (tokenizer: `{st['model']}`)  \n"
            f"min {st['min']} · mean {st['mean']} · p50 {st['p50']} · p95 {st['p95']} · max {st['max']} tokens  \n"
            f"**{st['over_max_length']}** rows over the max length {st['max_length']} (truncated in training)")


def _hist_frame(hist: list[dict] | None) -> pd.DataFrame:
    """Rows per token-length bin, at the bin's middle on a numeric axis (round ticks; range labels overlapped)."""
    if not hist:
        return pd.DataFrame({"tokens": pd.Series([], dtype=float), "rows": pd.Series([], dtype=int)})
    return pd.DataFrame({"tokens": [(h["start"] + h["end"]) / 2 for h in hist], "rows": [h["rows"] for h in hist]})


def _datasets(who: str | None = None) -> list[list]:
    """The datasets table's rows: everyone's, or ``who``'s (ui.common.owner_filter); the owner is the last column."""
    return [r for r in datasets_table() if is_mine(r[-1], who)]


def _dataset_choices(rows: list[list]) -> list[tuple[str, str]]:
    return [(f"{r[0]}: {r[1]} ({r[3]}, {r[4]} rows)", str(r[0])) for r in rows]


def refresh_datasets(selected: str | None = None, who: str | None = None):
    rows = _datasets(who)
    choices = _dataset_choices(rows)
    values = [v for _, v in choices]
    value = selected if selected in values else (values[0] if values else None)
    return gr.update(value=rows or None), gr.update(choices=choices, value=value)


# ------------------------------------------------------------------------------------------------------ handlers
def _upload_label(upload) -> str | None:
    """An upload's own file name: Gradio's temporary path (…/gradio/<hash>/name.json) is gone once it cleans up."""
    return Path(_source(upload, "")).name if upload else None


def _shown(text: str, upload) -> str:
    """A message with the upload's temporary path replaced by its file name."""
    text = text.replace(_source(upload, ""), _upload_label(upload)) if upload else text
    return md_text(text)


def inspect_source(upload, path, fmt, column_df, template_df):
    """Check a source without storing it: detected format, problems, placeholders, columns."""
    try:
        source = _source(upload, path)
        size = measure_source(source)
        if needs_a_job(size):  # the page never loads a large source, not even to look at it
            what = ("a Hub dataset: it is downloaded" if size.hub else
                    f"large ({size.rows:,} rows)" if size.rows and size.rows > IN_PAGE_ROWS else
                    f"large ({(size.bytes or 0) / 1024**2:,.0f} MB of data)")
            return (f"**This source is {what} and checked when you import it** — the import runs as a job in a "
                    "worker process, with progress, and reports its problems row by row.", gr.update(),
                    gr.update(), gr.update(), "")
        prep = prepare_dataset(source, format=fmt or "auto", column_map=_pairs(column_df) or None,
                               template_values=_pairs(template_df) or None)
    except DatasetError as exc:
        return (f"**Cannot use this source:** {_shown(str(exc), upload)}", gr.update(), gr.update(), gr.update(), "")
    summary = prep.problem_summary(set(DEFAULT_DROP))
    kind = {"preference": "preference pairs — for the DPO / ORPO objectives in the Train tab, not for SFT",
            "multiple_choice": "multiple-choice questions — a benchmark for Evaluate, not used for SFT",
            }.get(prep.kind, prep.kind)
    columns = md_text(", ".join(map(str, prep.columns[:12])))
    head = (f"**{prep.format}** ({kind})"
            f" · {prep.total_records:,} records · {len(prep.rows):,} usable · columns: {columns}"
            + (f" · detected: {prep.detected_format}" if prep.detected_format != prep.format else ""))
    notes = "".join(f"\n\n_{md_text(n)}_" for n in prep.notes)
    report = head + notes + "\n\n" + problems_markdown(summary)
    found = [p["code"] for p in summary if not p["fatal"]]
    drop_update = gr.update(choices=found, value=[c for c in found if c in DEFAULT_DROP])
    placeholder_rows = [[n, _pairs(template_df).get(n, "")] for n in prep.placeholders] or [["", ""]]
    fields = CANONICAL_FIELDS.get(prep.format, ())
    current = _pairs(column_df)
    column_rows = [[f, current.get(f, "")] for f in fields]
    sample = json.dumps(prep.rows[0].row, ensure_ascii=False, indent=1)[:3000] if prep.rows else ""
    return report, drop_update, gr.update(value=placeholder_rows), gr.update(value=column_rows), sample


def run_import(upload, path, fmt, name, column_df, template_df, drop_codes, val, test, seed, model, max_length,
               progress=gr.Progress(), request: gr.Request = None):
    try:
        source = _source(upload, path)
        size = measure_source(source)
        if needs_a_job(size):  # large or of unknown size (the Hub): a worker reads it, never the page
            options = dict(name=(name or "").strip() or None, format=fmt or "auto",
                           column_map=_pairs(column_df) or None,
                           split={"validation": float(val or 0), "test": float(test or 0), "seed": int(seed or 0)},
                           drop_invalid=list(drop_codes or []), template_values=_pairs(template_df) or None,
                           model=(model or "").strip() or "default", max_length=int(max_length or 2048))
            job = submit_import(source, options, owner=user_of(request), label=_upload_label(upload))
            why = ("a Hub dataset" if size.hub else
                   f"{size.rows:,} rows" if size.rows and size.rows > IN_PAGE_ROWS else
                   f"{(size.bytes or 0) / 1024**2:,.0f} MB of data")
            table, dd = refresh_datasets()
            return (f"**Import job #{job.id} {job.status.value}** — {why}, so a worker process reads and checks it "
                    "(the page never loads a large source); its progress is shown below, and the dataset appears in "
                    "the list when it is stored.", table, dd, gr.update(), "")
        result = import_dataset(
            source, name=(name or "").strip() or None, format=fmt or "auto", column_map=_pairs(column_df) or None,
            split={"validation": float(val or 0), "test": float(test or 0), "seed": int(seed or 0)},
            drop_invalid=list(drop_codes or []), template_values=_pairs(template_df) or None,
            model=(model or "").strip() or "default", max_length=int(max_length or 2048), progress=progress,
            source_label=_upload_label(upload), owner=user_of(request),
        )
    except (DatasetError, ValueError, JobError) as exc:
        table, dd = refresh_datasets()
        return f"**Import failed:** {_shown(str(exc), upload)}", table, dd, gr.update(), ""
    msg = f"**{md_text(result.message)}**" + "".join(f"\n\n_{md_text(n)}_" for n in result.notes)
    msg += "\n\n" + problems_markdown(result.problems)
    table, dd = refresh_datasets(str(result.dataset_id))
    hist = _hist_frame(get_dataset(result.dataset_id).meta.get("token_histogram"))
    return msg, table, dd, hist, stats_markdown(result.token_stats, result.kind)


def show_imports(request: gr.Request = None):
    """After an import was asked for: its job's progress, polled while one is active."""
    text, active = import_jobs_html(user_of(request))
    return text, gr.update(active=active)


def import_jobs_html(who: str | None) -> tuple[str, bool]:
    """The import jobs a person started in the last hour (their progress, or how they ended) and whether one is
    still active."""
    import datetime as dt

    from core import runs
    from storage.tables import as_utc

    now = dt.datetime.now(dt.UTC)
    rows, active = [], False
    for job in runs.list_runs(kind="import", limit=50):
        if who is not None and (job.owner or "") != who:
            continue
        if job.status.is_finished and job.finished_at and (now - as_utc(job.finished_at)).total_seconds() > 3600:
            continue
        active = active or job.status.is_active
        pct = int(job.step or 0) if job.max_steps else 0
        if job.status.value == "succeeded":
            fm = job.final_metrics or {}
            state = f"stored as dataset #{fm.get('dataset_id')}: {html.escape(str(fm.get('message', '')))}"
        elif job.status.is_finished:
            first = (job.error or "").strip().splitlines()[:1]
            state = f"{job.status.value}" + (f": {html.escape(first[0][:300])}" if first else "")
        else:
            state = f"{job.status.value} · {pct}%"
        bar = (f'<div class="fts-progress"><div style="width:{pct}%"></div></div>' if job.status.is_active else "")
        rows.append(f'<div class="fts-status"><b>import #{job.id}</b> {html.escape(job.dataset_ref or "")} — '
                    f"{state}</div>{bar}")
    return "".join(rows), active


def tick_imports(current, mine, seen, request: gr.Request = None):
    """The import jobs' progress; when one finished since the last tick, the datasets list is read again."""
    who = user_of(request)
    text, active = import_jobs_html(who)
    from core import runs

    done = {j.id for j in runs.list_runs(kind="import", limit=50) if j.status.is_finished}
    seen = set(seen or [])
    if done - seen:
        table_u, dd_u = refresh_datasets(current, owner_filter(mine, request))
    else:
        table_u, dd_u = gr.update(), gr.update()
    return text, table_u, dd_u, sorted(done), gr.update(active=active)


def run_demo_import(progress=gr.Progress()):
    from core.data import import_demo_task

    try:
        result = import_demo_task(progress=progress)
    except DatasetError as exc:
        table, dd = refresh_datasets()
        return f"**Demo task unavailable:** {md_text(exc)}", table, dd, gr.update(), ""
    table, dd = refresh_datasets(str(result.dataset_id))
    hist = _hist_frame(get_dataset(result.dataset_id).meta.get("token_histogram"))
    return f"**{md_text(result.message)}**", table, dd, hist, stats_markdown(result.token_stats)


def show_row(dataset_id, split, index, model, max_length, template=None):
    if not dataset_id:
        return None, "Pick a dataset first."
    try:
        pv = preview_row(dataset_id, int(index or 0), split or "train", (model or "").strip() or "default",
                         int(max_length) if max_length else None, template=template)
    except (DatasetError, ValueError) as exc:
        return None, f"**{md_text(exc)}**"
    if "choices" in pv["row"]:
        return pv["segments"], (f"Row {pv['index'] + 1} of {pv['split_rows']} in {split}: a multiple-choice question "
                                f"({len(pv['row']['choices'])} options, {pv['num_tokens']} tokens as shown) for "
                                "Evaluate — nothing is trained on it; the gold answer is in blue.")
    if "chosen" in pv["row"]:
        from core.data.feedback import source_line

        made = source_line(pv["row"].get("source"))
        return pv["segments"], (f"Row {pv['index'] + 1} of {pv['split_rows']} in {split}: a preference pair, "
                                f"{pv['num_tokens']} tokens as shown — prompt + chosen answer, then prompt + rejected "
                                "answer. Only the answers count (chosen green, rejected orange): DPO / ORPO raise the "
                                "chosen answer's probability against the rejected one's; grey is the prompt, red is "
                                "past the max length (cut off)." + (f"\n\nSource: {md_text(made)}" if made else ""))
    trained = sum(1 for _, lab in pv["segments"] if lab == "trained")
    info = (f"Row {pv['index'] + 1} of {pv['split_rows']} in {split}: {pv['num_tokens']} tokens, "
            f"~{pv['approx_trained_tokens']} carry loss (green) in {trained} assistant span(s); grey is context "
            "(masked), red is past the max length (cut off).")
    return pv["segments"], info


def show_row_number(dataset_id, split, number, model, max_length, template=None):
    """The preview box counts rows from 1, as the problem rows do; show_row takes the 0-based index."""
    return show_row(dataset_id, split, max(int(number or 1), 1) - 1, model, max_length, template)


def show_dataset(dataset_id):
    if not dataset_id:
        return "", _hist_frame(None), "No dataset selected."
    try:
        ds = get_dataset(dataset_id)
    except DatasetError as exc:
        return f"**{md_text(exc)}**", _hist_frame(None), ""
    meta = ds.meta or {}
    kind = {"preference": "preference pairs — **for the DPO / ORPO objectives** (Train tab), not for SFT",
            "multiple_choice": "multiple-choice questions — **a benchmark for Evaluate**, not usable for SFT",
            }.get(ds.kind, ds.kind)
    head = (f"**{md_text(ds.name)}** · {ds.format} · {kind} · {ds.rows:,} rows · split {fmt_splits(ds.splits)} "
            f"· hash `{ds.content_hash[:12]}`"
            f"\n\nsource: {md_text(ds.source)}\n\n" + _feedback_markdown(meta.get("feedback"))
            + problems_markdown(meta.get("problems", [])))
    return head, _hist_frame(meta.get("token_histogram")), stats_markdown(meta.get("token_stats"), ds.kind)


def _feedback_markdown(feedback: dict | None) -> str:
    """A dataset made from votes or an evaluation's corrections: what from and what was left out (issue 28)."""
    from core.data.feedback import feedback_line

    line = feedback_line(feedback)
    return f"{md_text(line)}\n\n" if line else ""


def run_stats(dataset_id, model, max_length, template=None, progress=gr.Progress()):
    if not dataset_id:
        return _hist_frame(None), "Pick a dataset first."
    try:
        out = compute_token_stats(dataset_id, (model or "").strip() or "default", int(max_length or 2048),
                                  progress=progress, template=template)
    except DatasetError as exc:
        return _hist_frame(None), f"**{md_text(exc)}**"
    except Exception as exc:  # noqa: BLE001 - UI shows any tokenizer load failure as a message
        return _hist_frame(None), f"**Cannot count tokens with '{md_text(model)}':** {md_text(exc)}"
    return _hist_frame(out["histogram"]), stats_markdown(out["token_stats"], get_dataset(dataset_id).kind)


# --------------------------------------------------------------------------------------------------------- layout
def _demo_available() -> bool:
    try:
        from core.data.demo import generate_demo_rows  # noqa: F401
    except ImportError:
        return False
    return True


def build_tab():
    gr.Markdown("### Bring a dataset\nJSON, JSONL, CSV/TSV, Parquet or TXT — alpaca, ShareGPT, OpenAI `messages`, "
                "prompt/completion, plain text, preference pairs or multiple-choice questions (MMLU, ARC, HellaSwag, "
                "TruthfulQA layouts; for Evaluate). Everything else becomes chat messages; token counts use the "
                "selected model's tokenizer.")
    with gr.Row():
        upload = gr.File(label="Upload a file", file_types=FILE_TYPES, type="filepath", elem_id="data-upload")
        with gr.Column():
            path = gr.Textbox(label="…or a local path / Hub dataset id",
                              placeholder="/data/train.jsonl or tatsu-lab/alpaca", elem_id="data-path")
            with gr.Row():
                fmt = gr.Dropdown(["auto", *FORMATS], value="auto", label="Format", elem_id="data-format")
                name = gr.Textbox(label="Name (optional)", elem_id="data-name")
            with gr.Row():
                model = gr.Textbox(value="default", label="Model (tokenizer & chat template)", elem_id="data-model")
                max_length = gr.Number(value=2048, precision=0, label="Max length (tokens)", elem_id="data-maxlen")
            template = gr.Dropdown(template_menu(), value=OWN, label="Prompt template (for a base model without "
                                   "one: pick what the run will train with)", elem_id="data-template")
    with gr.Accordion("Column mapping and {{placeholders}}", open=False):
        with gr.Row():
            column_df = gr.Dataframe(headers=["field", "source column"], value=[["", ""]], column_count=2,
                                     interactive=True, label="Map source columns to the format's fields")
            template_df = gr.Dataframe(headers=["placeholder", "value"], value=[["", ""]], column_count=2,
                                       interactive=True, label="Fill {{placeholders}} found in the samples")
    with gr.Row():
        val = gr.Slider(0, 0.5, value=0.1, step=0.01, label="Validation fraction")
        test = gr.Slider(0, 0.5, value=0.0, step=0.01, label="Test fraction")
        seed = gr.Number(value=42, precision=0, label="Split seed")
    drop_codes = gr.CheckboxGroup(choices=[], value=[], label="Drop rows with these problems (unticked = keep them)",
                                  elem_id="data-drop")
    with gr.Row():
        inspect_btn = gr.Button("Check", elem_id="data-check")
        import_btn = gr.Button("Import", variant="primary", elem_id="data-import")
        demo_btn = gr.Button("Load the demo task", visible=_demo_available(), elem_id="data-demo")
    report = gr.Markdown(elem_id="data-report")
    import_status = gr.HTML(elem_id="data-import-jobs")
    imports_timer = gr.Timer(2.0, active=False)
    seen_imports = gr.State([])
    with gr.Accordion("First normalised row", open=False):
        sample = gr.Code(language="json", label="as stored")

    with gr.Row():
        gr.Markdown("### Datasets")
        mine = mine_box("Only mine", "data-mine")
    table = gr.Dataframe(headers=TABLE_HEADERS, value=datasets_table() or None, interactive=False, elem_id="data-table")
    with gr.Row():
        dataset = gr.Dropdown(choices=_dataset_choices(_datasets()), label="Dataset", elem_id="data-dataset",
                                  allow_custom_value=True)  # a refresh can remove the shown item
        refresh_btn = gr.Button("Refresh", size="sm")
    detail = gr.Markdown(elem_id="data-detail")
    with gr.Row():
        with gr.Column():
            hist = gr.BarPlot(_hist_frame(None), x="tokens", y="rows", title="Token length (train split)",
                              x_title="tokens per row", y_title="rows", y_lim=[0, None], elem_id="data-hist")
        with gr.Column():
            stats_md = gr.Markdown(elem_id="data-stats")
            stats_btn = gr.Button("Count tokens with this model", elem_id="data-stats-btn")
    gr.Markdown("#### Preview: what the model is trained on")
    with gr.Row():
        split = gr.Radio(["train", "validation", "test"], value="train", label="Split")
        index = gr.Number(value=1, precision=0, minimum=1, label="Row (1 = the first, as problems count)",
                          elem_id="data-row")
        preview_btn = gr.Button("Show row", elem_id="data-preview-btn")
    preview_info = gr.Markdown(elem_id="data-preview-info")
    preview = gr.HighlightedText(label="Rendered with the chat template — green tokens carry loss",
                                 color_map=MASK_COLORS, show_legend=True, combine_adjacent=True,
                                 show_inline_category=False, elem_id="data-preview")

    inspect_btn.click(inspect_source, [upload, path, fmt, column_df, template_df],
                      [report, drop_codes, template_df, column_df, sample])
    upload.upload(inspect_source, [upload, path, fmt, column_df, template_df],
                  [report, drop_codes, template_df, column_df, sample]).then(
        None, None, None, js="() => document.getElementById('data-report')?.scrollIntoView({block: 'nearest'})")
    def filtered(current, mine, request: gr.Request):  # the table and list as 'Only mine' says
        return refresh_datasets(current, owner_filter(mine, request))

    import_btn.click(
        run_import, [upload, path, fmt, name, column_df, template_df, drop_codes, val, test, seed, model, max_length],
        [report, table, dataset, hist, stats_md],
    ).then(show_imports, None, [import_status, imports_timer]).then(filtered, [dataset, mine], [table, dataset]).then(
        show_row_number, [dataset, split, index, model, max_length, template], [preview, preview_info])
    demo_btn.click(run_demo_import, None, [report, table, dataset, hist, stats_md]).then(
        filtered, [dataset, mine], [table, dataset]).then(
        show_row_number, [dataset, split, index, model, max_length, template], [preview, preview_info])
    imports_timer.tick(tick_imports, [dataset, mine, seen_imports],
                       [import_status, table, dataset, seen_imports, imports_timer], show_progress="hidden")
    refresh_btn.click(filtered, [dataset, mine], [table, dataset])
    mine.change(filtered, [dataset, mine], [table, dataset])
    dataset.change(show_dataset, [dataset], [detail, hist, stats_md])
    stats_btn.click(run_stats, [dataset, model, max_length, template], [hist, stats_md])
    preview_btn.click(show_row_number, [dataset, split, index, model, max_length, template], [preview, preview_info])
    template.change(show_row_number, [dataset, split, index, model, max_length, template], [preview, preview_info])

    def load_lists(current, mine=False, request: gr.Request = None):
        """Page load / tab open: the datasets as they are now (a CLI import, another browser's) and the selected
        one's details (a value set by the page itself fires no change event)."""
        table_u, dd_u = refresh_datasets(current, owner_filter(mine, request))
        jobs_text, active = import_jobs_html(user_of(request))
        return (table_u, dd_u, *show_dataset(dd_u.get("value")), jobs_text, gr.update(active=active))

    return load_lists, [dataset, mine], [table, dataset, detail, hist, stats_md, import_status, imports_timer]
