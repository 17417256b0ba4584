"""Datasets: read any common format, normalise to chat ``messages``, validate, count tokens, split, store versions.

Public API
----------
``load_training_rows(ref, split="train") -> list[dict]``
    ``ref`` is a Dataset id (digits, e.g. ``"3"``: reads ``<Dataset.path>/<split>.jsonl``) or a path to a data file
    (format auto-detected and normalised in memory; rows with problems dropped, except over-long rows which the
    trainer truncates; ``split`` other than "train" returns the rows of a ``split`` column, else ``[]``).
    Rows: ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...], "tools": [...]?}``;
    plain-text datasets give ``{"text": str}`` rows. Preference and multiple-choice datasets raise DatasetError (SFT
    cannot use them; read those with ``read_split``).

``import_dataset(source, *, name=None, format="auto", column_map=None, split=None, drop_invalid=True,
template_values=None, model="default", max_length=2048, progress=None) -> ImportResult``
    ``source``: a local file (.json array / .jsonl / .csv / .tsv / .parquet / .txt) or a Hub dataset id
    (``owner/name`` or ``hub:owner/name``; offline → DatasetError "the Hugging Face Hub is unreachable").
    ``format``: "auto" or one of FORMATS (alpaca, sharegpt, openai, prompt_completion, text, preference,
    multiple_choice). A multiple_choice dataset (kind ``multiple_choice``: MMLU / ARC / HellaSwag / TruthfulQA-MC
    layouts) stores ``{"question": str, "choices": [str, ...], "answer": int (0-based), "context": str?}`` rows for
    Evaluate, plus what the benchmark's own prompt needs (``layout``, ``subject``, HellaSwag's ``activity_label`` /
    ``ctx_a`` / ``ctx_b``, TruthfulQA's ``mc2``; see core.data.formats); its token stats count the question with its
    lettered options and the answer, and never flag too_long. ``split`` fractions may add up to 1 (no training rows).
    ``column_map``: {canonical field: source column}, e.g. ``{"prompt": "question_text", "completion": "answer"}``.
    ``split``: ``SplitSpec(validation=0.1, test=0.0, seed=42, use_column=True)`` or the same as a dict; a ``split``
    column (or the Hub dataset's own splits) wins when present.
    ``drop_invalid``: True = drop every row with a problem (except the warnings non_string_content and
    unfilled_placeholder); False = keep every row that can be represented; or a set of problem codes to drop
    (see PROBLEM_CODES). Rows that cannot be represented are always dropped.
    ``template_values``: fills ``{{name}}`` placeholders (``find_placeholders`` lists them).
    ``model``/``max_length``: tokenizer for token stats and the ``too_long`` check (None skips both).
    ``progress``: ``progress(fraction, desc=...)`` — a ``gr.Progress`` fits.
    Identical content (order-insensitive hash of the kept rows) with the same split settings is stored once: the
    second import returns the existing version with ``created=False``; the same rows with other split settings are a
    new version (its ``content_hash`` is the rows' hash + the settings'). ``read_split(ds, "all")`` gives every row in
    the source's order (``meta.json``'s ``row_splits``).
    Stored layout: ``<datasets_dir>/<content_hash[:16]>[-<split settings' hash>]/{train,validation,test}.jsonl`` +
    ``meta.json``;
    ``Dataset.splits`` = {"train": n, "validation": n, "test": n}; ``Dataset.meta`` holds ``problems`` (summary
    per kind: code, title, count, first rows, examples, action), ``token_stats`` (keys: model, total_tokens, rows,
    min, mean, p50, p95, max, over_max_length, max_length — over the train split, each row capped at max_length
    for total_tokens), ``token_histogram``, ``notes`` (encoding/CRLF remarks), ``split_spec``, ``placeholders``.

``prepare_dataset(source, *, format, column_map, template_values, progress) -> PreparedData``
    The in-memory part of an import (nothing stored): detected format, columns, placeholders, per-row problems.

``compute_token_stats(dataset_id, model="default", max_length=2048, save=True) -> dict``,
``preview_row(dataset_id, index, split="train", model="default", max_length=None) -> dict``,
``list_datasets()``, ``get_dataset(id)``, ``read_split(ds, split)``, ``delete_dataset(id)``, ``datasets_table()``,
``import_records(records, source=..., ...)`` (in-memory rows), ``import_demo_task(n=400, seed=0)`` (core.data.demo).

Preference data from people (core.data.feedback): ``preference_from_votes(model=, since=, min_votes=, voter=)`` turns
the Playground's votes into a preference dataset (``FeedbackResult``: dataset_id, rows, left_out, …); an evaluation's
corrections are made by core.evaluate.corrections and stored the same way (``store_pairs``).
"""
from core.data.errors import PROBLEM_CODES, DatasetError, RowProblem
from core.data.formats import FORMATS, KIND_OF_FORMAT
from core.data.importer import ImportResult, import_dataset, import_demo_task, import_records
from core.data.prepare import PreparedData, prepare_dataset, summarise_problems
from core.data.splits import SplitSpec, assign_splits
from core.data.stored import get_dataset, list_datasets, read_split
from core.data.training_rows import load_training_rows
from core.data.validate import fill_placeholders, find_placeholders
from core.data.views import (
    compute_token_stats,
    dataset_summary,
    datasets_table,
    delete_dataset,
    preview_of,
    preview_row,
)

__all__ = [
    "DatasetError",
    "FORMATS",
    "ImportResult",
    "KIND_OF_FORMAT",
    "PROBLEM_CODES",
    "PreparedData",
    "RowProblem",
    "SplitSpec",
    "assign_splits",
    "fill_placeholders",
    "find_placeholders",
    "compute_token_stats",
    "dataset_summary",
    "datasets_table",
    "delete_dataset",
    "get_dataset",
    "import_demo_task",
    "import_records",
    "preview_of",
    "preview_row",
    "import_dataset",
    "list_datasets",
    "load_training_rows",
    "prepare_dataset",
    "read_split",
    "summarise_problems",
]
