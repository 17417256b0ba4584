"""The ``evaluate`` job kind: base vs tuned on the same examples, in its own process (the runs core runs it).

Generation mode, per example: the reference answer's loss (and perplexity) under each model, then both models'
answers — base and tuned rows of a prompt in one batch when they share the base weights (PEFT adapter names),
length-sorted batches, finished rows leaving the batch — scored with ROUGE/BLEU/chrF/exact match and, for JSON
answers, valid-JSON rate and per-field accuracy. Multiple-choice mode scores each choice's log-likelihood the way
lm-evaluation-harness does (core.evaluate.multiple_choice). The numbers go into an Evaluation row, the per-example
outputs into ``examples.jsonl`` in the job's folder.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from core import runs
from core.data import DatasetError, get_dataset, load_training_rows, read_split
from core.data.chat import tokenize_conversation
from core.data.formats import PREFERENCE_OBJECTIVES
from core.evaluate import metrics as M
from core.evaluate.config import EvalConfig
from core.evaluate.harness import run_lm_eval_task
from core.evaluate.multiple_choice import MultipleChoiceError, build_requests, score_rows, summarise
from core.evaluate.sides import resolve_sides, speed, store_evaluation
from core.generate import (
    BASE_ADAPTER,
    MIN_SHARED_PREFIX,
    GenerateError,
    GenSettings,
    ModelCache,
    ModelSource,
    decode,
    generate_rows,
    prompt_ids,
    share_prompt_format,
    shared_prefix_len,
)
from core.runs.errors import JobError
from core.runs.worker import JobContext, JobResult, StopRequested, log

# ---- what to compare, on what ----------------------------------------------------------------------------------------

def _sample(rows: list[dict], limit: int | None, seed: int) -> list[tuple[int, dict]]:
    idx = list(range(len(rows)))
    if limit is not None and len(idx) > limit:
        idx = sorted(random.Random(seed).sample(idx, limit))  # noqa: S311 - a reproducible sample, not a secret
    return [(i, rows[i]) for i in idx]


def _pairs_as_conversations(rows: list[dict], kind: str) -> tuple[list[dict], str]:
    """Preference pairs are evaluated as conversations whose reference is the chosen answer (a DPO / ORPO run is
    judged by how close it comes to the answers it was taught to prefer)."""
    if kind != "preference":
        return rows, kind
    return [{"messages": list(r.get("prompt") or []) + list(r.get("chosen") or [])} for r in rows], "sft"


def load_rows(cfg: EvalConfig) -> tuple[list[tuple[int, dict]], str, str, str]:
    """(sampled (row number, row) pairs, dataset reference, split used, dataset kind)."""
    rows, ref, split, kind = _load_rows(cfg)
    if kind == "preference":
        converted, kind = _pairs_as_conversations([r for _, r in rows], kind)
        rows = [(i, c) for (i, _), c in zip(rows, converted)]
    return rows, ref, split, kind


def _load_rows(cfg: EvalConfig) -> tuple[list[tuple[int, dict]], str, str, str]:
    split_asked = cfg.resolved_split()
    if cfg.dataset:
        try:
            ds = get_dataset(cfg.dataset)
        except DatasetError as exc:
            raise JobError(f"{exc}: pick one from the Data tab") from None
        rows = read_split(ds, split_asked)
        if not rows:
            have = ", ".join(f"{k} {v}" for k, v in (ds.splits or {}).items() if v) or "no rows"
            raise JobError(f"dataset {ds.id} has no {split_asked} rows ({have}); pick a split that has rows")
        return _sample(rows, cfg.limit, cfg.seed), str(ds.id), split_asked, ds.kind
    run = runs.get_run(cfg.run_id)
    ref = run.dataset_ref or (run.config or {}).get("dataset", "")
    for split in (split_asked, "validation") if split_asked == "test" else (split_asked,):
        try:
            if ref.isdigit():
                ds = get_dataset(ref)
                rows, kind = read_split(ds, split), ds.kind
            else:
                objective = (run.config or {}).get("objective", "sft")
                rows = load_training_rows(ref, split=split, objective=objective)
                kind = "preference" if objective in PREFERENCE_OBJECTIVES else "sft"
        except DatasetError as exc:
            raise JobError(f"run {run.id}'s dataset cannot be read ({exc}); pick a dataset to evaluate on") from None
        if rows:
            return _sample(rows, cfg.limit, cfg.seed), f"run:{run.id}", split, kind
    raise JobError(f"run {run.id} trained on {'dataset #' + ref if ref.isdigit() else ref}, which has no held-out "
                   "rows (test or validation split): import it with a test split in the Data tab, or pick another "
                   "dataset to evaluate on")


def trained_rows_note(cfg: EvalConfig, split: str) -> str | None:
    """When the rows scored include the ones the run trained on (its own dataset, split all or train)."""
    if cfg.run_id is None or not cfg.dataset or split not in ("all", "train"):
        return None
    try:
        run = runs.get_run(cfg.run_id)
    except runs.JobError:
        return None
    if str(run.dataset_ref or (run.config or {}).get("dataset", "")) != str(cfg.dataset):
        return None
    return (f"dataset {cfg.dataset} is the one run {cfg.run_id} trained on and split {split} includes its training "
            "rows: pick its test or validation split to score held-out rows only")


def split_conversation(row: dict) -> tuple[list[dict], str | None]:
    """(prompt messages, reference answer or None): everything before the last assistant turn, and that turn."""
    msgs = row.get("messages") or []
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
    if last is None:
        return list(msgs), None
    return list(msgs[:last]), str(msgs[last].get("content") or "")


# ---- reference loss --------------------------------------------------------------------------------------------------

def reference_losses(loaded, examples: list[tuple[list[int], list[int]]], adapters: list[str | None],
                     batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed NLL, tokens) of the assistant tokens of each example under its adapter; logits only where a label
    is (the union of label columns of a batch). Rows of a batch that start alike up to their first label (a system
    prompt, an instruction: 64 of the demo task's ~145 tokens) compute that prefix once per adapter and go on from
    its KV cache, as generation's prefill does (core.generate.decoding)."""
    import torch

    device = next(loaded.model.parameters()).device
    pad = loaded.tokenizer.pad_token_id or 0
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        longest = max(len(examples[i][0]) for i in idx)
        ids = torch.full((len(idx), longest), pad, dtype=torch.long)
        att = torch.zeros((len(idx), longest), dtype=torch.long)
        lab = torch.zeros((len(idx), longest), dtype=torch.bool)
        for r, i in enumerate(idx):
            tok, mask = examples[i]
            ids[r, :len(tok)] = torch.tensor(tok)
            att[r, :len(tok)] = 1
            lab[r, :len(mask)] = torch.tensor(mask, dtype=torch.bool)
        # position t predicts token t+1: keep column t where token t+1 carries loss
        target_mask = torch.zeros_like(lab)
        target_mask[:, :-1] = lab[:, 1:]
        cols = target_mask.any(0).nonzero().squeeze(-1)
        if cols.numel() == 0:
            continue
        names = [adapters[i] or BASE_ADAPTER for i in idx]
        # the shared prefix ends before the first column that needs logits
        prefix = min(shared_prefix_len([examples[i][0] for i in idx]), int(cols[0]))
        with loaded.lock, torch.no_grad():
            if len(idx) > 1 and prefix >= MIN_SHARED_PREFIX:
                logits = _logits_after_prefix(loaded, ids, att, cols, prefix, names, device)
            else:
                kw: dict[str, Any] = {"adapter_names": names} if loaded.is_peft else {}
                logits = loaded.model(input_ids=ids.to(device), attention_mask=att.to(device), use_cache=False,
                                      logits_to_keep=cols.to(device), **kw).logits.float()
        next_tok = torch.roll(ids, -1, dims=1)[:, cols]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).cpu(), next_tok.reshape(-1),
                                                reduction="none").view(len(idx), -1)
        keep = target_mask[:, cols]
        for r, i in enumerate(idx):
            out[i] = (float((nll[r] * keep[r]).sum()), int(keep[r].sum()))
    return out


def _logits_after_prefix(loaded, ids, att, cols, prefix: int, names: list[str], device):
    """The logits at ``cols`` of right-padded rows that share their first ``prefix`` tokens: the prefix once per
    adapter, its KV cache copied to each row, then every row's rest (positions going on after the prefix)."""
    import torch

    kinds = list(dict.fromkeys(names))
    kw: dict[str, Any] = {"adapter_names": kinds} if loaded.is_peft else {}
    head = ids[:1, :prefix].expand(len(kinds), -1).to(device)
    cache = loaded.model(input_ids=head, attention_mask=torch.ones_like(head), use_cache=True, logits_to_keep=1,
                         **kw).past_key_values
    cache.batch_select_indices(torch.tensor([kinds.index(n) for n in names], device=device))
    rest = ids[:, prefix:].to(device)
    positions = torch.arange(prefix, ids.shape[1], device=device)[None].expand(len(names), -1)
    kw = {"adapter_names": names} if loaded.is_peft else {}
    return loaded.model(input_ids=rest, attention_mask=att.to(device), position_ids=positions, past_key_values=cache,
                        use_cache=True, logits_to_keep=(cols - prefix).to(device), **kw).logits.float()


# ---- the job ---------------------------------------------------------------------------------------------------------

def _progress(ctx: JobContext, done: int, total: int, t0: float) -> None:
    elapsed = time.time() - t0
    eta = elapsed / done * (total - done) if done else None
    ctx.progress(step=done, max_steps=total, eta_s=eta)


def run_job(ctx: JobContext) -> JobResult:
    cfg = EvalConfig.model_validate(ctx.config)
    if cfg.mode == "lm_eval":
        return run_lm_eval_task(ctx, cfg)
    base_src, tuned_src = resolve_sides(cfg)
    pairs, dataset_ref, split, kind = load_rows(cfg)
    log(f"evaluating {tuned_src.label} against {base_src.label} on {dataset_ref} [{split}], {len(pairs)} rows, "
        f"mode {cfg.mode}")
    cache = ModelCache(budget_bytes=1 << 62)  # this process exists for this job: no sharing to budget for
    if cfg.mode == "multiple_choice" or kind == "multiple_choice":
        if kind != "multiple_choice":
            raise JobError(f"dataset {dataset_ref} holds conversations, not multiple-choice questions; use "
                           "generation mode")
        return _run_multiple_choice(ctx, cfg, cache, base_src, tuned_src, pairs, dataset_ref, split)
    return _run_generation(ctx, cfg, cache, base_src, tuned_src, pairs, dataset_ref, split)


def _slots(cache: ModelCache, base_src: ModelSource, tuned_src: ModelSource):
    from dataclasses import replace

    base_slot = cache.slot(base_src)
    tuned_slot = cache.slot(tuned_src)
    if tuned_slot.loaded is base_slot.loaded:  # the adapter loaded into the base: base rows run as "__base__"
        base_slot = replace(base_slot, adapter_name=BASE_ADAPTER)
    base_slot = share_prompt_format(base_slot, tuned_slot)
    if base_slot.template_from:
        log(f"the base model has no chat template: it is prompted with the template of {base_slot.template_from}")
    return base_slot, tuned_slot


def _run_generation(ctx, cfg, cache, base_src, tuned_src, pairs, dataset_ref, split) -> JobResult:
    t0 = time.time()
    base_slot, tuned_slot = _slots(cache, base_src, tuned_src)
    score_t0 = time.time()  # the speed counts scoring, not loading
    settings = GenSettings(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed)
    records: list[dict] = []
    notes: list[str] = []
    too_long = 0
    for row_no, row in pairs:
        prompt, reference = split_conversation(row)
        rec = {"i": row_no, "prompt": prompt, "reference": reference}
        limit = base_slot.loaded.max_positions
        try:
            ids = {side: prompt_ids(slot.tok, prompt) for side, slot in (("base", base_slot), ("tuned", tuned_slot))}
            longest = max(len(x) for x in ids.values())
            if limit and longest + cfg.max_new_tokens > limit:
                raise GenerateError(f"prompt is {longest} tokens; with {cfg.max_new_tokens} new tokens it exceeds "
                                    f"the model's context of {limit}")
            rec["_ids"] = ids
        except GenerateError as exc:
            rec["note"] = f"skipped: {exc}"
            too_long += 1
        records.append(rec)
    usable = [r for r in records if "_ids" in r]
    if too_long:
        first = next(r["i"] for r in records if "note" in r)
        notes.append(f"{too_long} row(s) skipped (first: row {first}): the prompt does not fit the model's context")
    if not usable:
        raise JobError("no row can be evaluated: " + (notes[0] if notes else "the dataset is empty"))
    with_ref = [r for r in usable if r["reference"] is not None]
    if not with_ref:
        notes.append("this dataset has no reference answers: loss, ROUGE/BLEU/chrF and exact match are skipped; "
                     "only the outputs are shown")
    total = len(with_ref) + len(usable)
    _progress(ctx, 0, total, t0)

    # 1) loss of the reference answers under each model
    side_nll = {"base": [0.0, 0], "tuned": [0.0, 0]}
    if with_ref:
        for side, slot in (("base", base_slot), ("tuned", tuned_slot)):
            toks = []
            for r in with_ref:
                tc = tokenize_conversation(slot.tok, r["prompt"] + [
                    {"role": "assistant", "content": r["reference"]}])
                toks.append((tc.input_ids, tc.assistant_mask))
            losses = reference_losses(slot.loaded, toks, [slot.adapter_name] * len(toks), cfg.batch_size)
            for r, (nll, n) in zip(with_ref, losses):
                r.setdefault("loss", {})[side] = nll / n if n else None
                side_nll[side][0] += nll
                side_nll[side][1] += n
            if ctx.should_stop():
                raise StopRequested()
        _progress(ctx, len(with_ref), total, t0)
    log(f"reference loss: base {M.loss_metrics(*side_nll['base'])['loss']}, "
        f"tuned {M.loss_metrics(*side_nll['tuned'])['loss']}")

    # 2) both models' answers
    gen_t0 = time.time()
    done_before = len(with_ref)

    def on_batch(done, n):
        _progress(ctx, done_before + done * len(usable) // n, total, t0)
        if ctx.should_stop():
            raise StopRequested()

    if tuned_slot.loaded is base_slot.loaded:
        prompts = [r["_ids"]["base"] for r in usable] + [r["_ids"]["tuned"] for r in usable]
        adapters = [BASE_ADAPTER] * len(usable) + [tuned_slot.adapter_name] * len(usable)
        toks = [base_slot.tok] * len(usable) + [tuned_slot.tok] * len(usable)
        rows = generate_rows(base_slot.loaded, prompts, adapters, settings, batch_size=2 * cfg.batch_size,
                             on_batch=on_batch, tokenizers=toks)
        for k, r in enumerate(usable):
            r["base"] = decode(base_slot.loaded, rows[k], base_slot.tok)
            r["tuned"] = decode(base_slot.loaded, rows[len(usable) + k], tuned_slot.tok)
    else:  # a full fine-tune: two models
        for side, slot in (("base", base_slot), ("tuned", tuned_slot)):
            rows = generate_rows(slot.loaded, [r["_ids"][side] for r in usable], [slot.adapter_name] * len(usable),
                                 settings, batch_size=cfg.batch_size, on_batch=on_batch,
                                 tokenizers=[slot.tok] * len(usable))
            for r, row in zip(usable, rows):
                r[side] = decode(slot.loaded, row, slot.tok)
    gen_s = time.time() - gen_t0
    log(f"generated {2 * len(usable)} answers in {gen_s:.1f}s ({2 * len(usable) / gen_s:.2f} examples/s)")

    # 3) scores
    result: dict[str, dict] = {"base": {}, "tuned": {}}
    refs = [r["reference"] for r in with_ref]
    json_refs = [M.reference_json(x) for x in refs]
    is_json = bool(refs) and sum(j is not None for j in json_refs) >= 0.5 * len(refs)
    scorer = M._scorer()
    for side in ("base", "tuned"):
        out = result[side]
        out.update(M.loss_metrics(*side_nll[side]))
        if with_ref:
            out.update(M.text_metrics([r[side] for r in with_ref], refs))
            if is_json:
                jm = M.json_metrics([r[side] for r, j in zip(with_ref, json_refs) if j is not None],
                                    [j for j in json_refs if j is not None])
                out.update(jm)
        for r, j in zip(with_ref, json_refs):
            sc = M.example_text_scores(r[side], r["reference"], scorer)
            if is_json and j is not None:
                jsc = M.example_json_scores(r[side], j)
                sc.update(field_accuracy=jsc["field_accuracy"], json_exact_match=jsc["json_exact_match"],
                          valid_json=jsc["valid_json"])
            r.setdefault("scores", {})[side] = sc
        out["n"] = len(usable)
    note = trained_rows_note(cfg, split)
    if note:
        notes.append(note)
    metrics = {"base": result["base"], "tuned": result["tuned"],
               "delta": M.delta(result["base"], result["tuned"]), "notes": notes,
               "generation_examples_per_s": 2 * len(usable) / gen_s if gen_s > 0 else None,
               **speed(2 * len(usable), time.time() - score_t0)}
    return store_evaluation(ctx, cfg, "generation", base_src, tuned_src, dataset_ref, split, records, metrics)


def fewshot_pool(cfg: EvalConfig, split: str) -> tuple[list[dict] | None, bool]:
    """(few-shot rows, leave each question out of its own draw). None: the rows of the scored split (the default);
    a named split that overlaps the scored one (the same, or either is all) leaves the question out too."""
    if not cfg.num_fewshot or not cfg.fewshot_split or cfg.fewshot_split == split:
        return None, True
    return read_split(get_dataset(cfg.dataset), cfg.fewshot_split), "all" in (split, cfg.fewshot_split)


def _run_multiple_choice(ctx, cfg, cache, base_src, tuned_src, pairs, dataset_ref, split) -> JobResult:
    rows = [r for _, r in pairs]
    pool, exclude = fewshot_pool(cfg, split)
    if pool is None and cfg.num_fewshot:  # the whole scored split, not only the sampled rows, is the pool
        pool = read_split(get_dataset(cfg.dataset), split)
    options = {"task": cfg.mc_task, "num_fewshot": cfg.num_fewshot, "fewshot_rows": pool, "exclude_self": exclude}
    try:
        form, _requests = build_requests(rows, cfg.mc_style, **options)  # bad rows / settings: said before loading
    except MultipleChoiceError as exc:
        raise JobError(str(exc)) from None
    log(f"multiple choice: {form.describe()}")
    base_slot, tuned_slot = _slots(cache, base_src, tuned_src)
    t0 = time.time()
    _progress(ctx, 0, 2 * len(rows), t0)

    def score(model, tok, adapter_names=None):
        try:
            return score_rows(model, tok, rows, cfg.mc_style, adapter_names=adapter_names,
                              batch_size=cfg.batch_size, **options)
        except MultipleChoiceError as exc:
            raise JobError(str(exc)) from None

    if tuned_slot.loaded is base_slot.loaded and base_slot.tok is not tuned_slot.tok:
        per = {}
        for side, slot in (("base", base_slot), ("tuned", tuned_slot)):
            res = score(slot.loaded.model, slot.tok, [slot.row_adapter()])
            per[side] = res[slot.row_adapter()]
    elif tuned_slot.loaded is base_slot.loaded:  # base and tuned rows in one batch
        both = score(base_slot.loaded.model, base_slot.loaded.tokenizer, [BASE_ADAPTER, tuned_slot.adapter_name])
        per = {"base": both[BASE_ADAPTER], "tuned": both[tuned_slot.adapter_name]}
    else:
        per = {}
        for side, slot in (("base", base_slot), ("tuned", tuned_slot)):
            res = score(slot.loaded.model, slot.tok)
            per[side] = next(iter(res.values()))
            if ctx.should_stop():
                raise StopRequested()
    seconds = time.time() - t0
    _progress(ctx, 2 * len(rows), 2 * len(rows), t0)
    records = []
    for k, (row_no, row) in enumerate(pairs):
        b, t = per["base"][k], per["tuned"][k]
        rec = {"i": row_no, "question": row.get("question", ""), "choices": row.get("choices", []),
               "gold": b["gold"], "pred": {"base": b["pred"], "tuned": t["pred"]},
               "scores": {side: _mc_scores(r) for side, r in (("base", b), ("tuned", t))},
               "lls": {"base": b["lls"], "tuned": t["lls"]}}
        if b["mc2"] is not None:
            rec["mc2_lls"] = {"base": b["mc2_lls"], "tuned": t["mc2_lls"]}
        records.append(rec)
    base_m, tuned_m = summarise(per["base"]), summarise(per["tuned"])
    notes = [f"prompt: {form.describe()}"]
    if any(isinstance(r.get("mc2"), dict) for r in rows) and "mc2" not in base_m:
        notes.append("the rows' MC2 targets are not scored under the lettered mmlu prompt (its options are the MC1 "
                     "choices): use the arc or native style for mc2")
    note = trained_rows_note(cfg, split)
    if note:
        notes.append(note)
    log(f"scored {len(rows)} questions on both sides in {seconds:.1f}s ({2 * len(rows) / max(seconds, 1e-9):.2f} "
        "examples/s)")
    metrics = {"base": base_m, "tuned": tuned_m, "delta": M.delta(base_m, tuned_m), "notes": notes,
               "formulation": {"style": form.style, "task": form.task, "num_fewshot": form.num_fewshot},
               **speed(2 * len(rows), seconds)}
    return store_evaluation(ctx, cfg, "multiple_choice", base_src, tuned_src, dataset_ref, split, records, metrics)


def _mc_scores(r: dict) -> dict:
    out = {}
    if r["gold"] is not None:
        out.update(correct=float(r["correct"]), correct_norm=float(r["correct_norm"]))
    if r["mc2"] is not None:
        out["mc2"] = r["mc2"]
    return out


def examples_file(job_dir: Path) -> Path:
    return job_dir / "examples.jsonl"
