"""Preference tuning (DPO, ORPO) on the SFT spine: the same worker, trainer, checkpoints, stop/resume and curves.

A pair is two sequences, prompt + chosen and prompt + rejected; only the answer's tokens count. Both go into one
padding-free batch row ([c0, r0, c1, r1, ...], restarting position ids, no padding FLOPs), and the LM head projects
only at the answer's positions — the ideas that make the SFT path fast, applied to the pair. Each sequence's
log-probability is the sum over its answer tokens.

DPO's reference is the model as it was at step 0 (the base, or the base + the adapter a run continues from): its
log-probabilities are computed once, before the first step, in eval mode, and kept in the run's folder
(``reference_logps.json``), so no second copy of the weights is ever loaded and a resume uses the same reference.
ORPO needs no reference.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.data.chat import answer_only_mask, tokenize_conversation
from core.train.tokenize import IGNORE_INDEX, PaddingFreeCollator, labelled_logits

REFERENCE_FILE = "reference_logps.json"
# the curves a person watches while preference tuning: logged each step, stored with the step's metric row
PREFERENCE_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                   "logps/rejected", "nll_loss", "log_odds_ratio")


def _text(messages: list[dict]) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages or [])


def tokenize_pairs(tokenizer, rows: list[dict[str, Any]], max_length: int, *,
                   keep_identical: bool = False) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Preference rows (``{"prompt": [...], "chosen": [...], "rejected": [...]}``) → examples with
    ``chosen_ids/chosen_labels/rejected_ids/rejected_labels`` (labels only on the answer). Pairs whose chosen and
    rejected answers are the same text are dropped and counted (``identical``) unless ``keep_identical``."""
    examples: list[dict[str, Any]] = []
    counts = {"pairs": len(rows), "identical": 0, "truncated": 0, "skipped_no_answer": 0, "tokens": 0,
              "loss_tokens": 0}
    for row in rows:
        prompt = list(row.get("prompt") or [])
        if _text(row.get("chosen")).strip() == _text(row.get("rejected")).strip():
            counts["identical"] += 1
            if not keep_identical:
                continue
        prompt_spans = sum(1 for m in prompt if m.get("role") == "assistant")
        ex: dict[str, Any] = {}
        truncated = False
        for side in ("chosen", "rejected"):
            tc = tokenize_conversation(tokenizer, prompt + list(row.get(side) or []), max_length=max_length)
            mask = answer_only_mask(tc.assistant_mask, prompt_spans)
            if sum(mask[1:]) == 0:
                break
            ex[f"{side}_ids"] = tc.input_ids
            ex[f"{side}_labels"] = [t if m else IGNORE_INDEX for t, m in zip(tc.input_ids, mask)]
            truncated |= tc.truncated
        else:
            examples.append(ex)
            counts["truncated"] += int(truncated)
            for side in ("chosen", "rejected"):
                counts["tokens"] += len(ex[f"{side}_ids"])
                counts["loss_tokens"] += sum(1 for x in ex[f"{side}_labels"][1:] if x != IGNORE_INDEX)
            continue
        counts["skipped_no_answer"] += 1  # truncation left no answer token on one side
    return examples, counts


@dataclass
class PairCollator:
    """A batch of pairs as one padding-free row [c0, r0, c1, r1, ...] (or a padded batch of 2B rows), with each
    pair's reference log-probabilities when the examples carry them."""

    pad_token_id: int
    padding_free: bool = True

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = []
        for e in examples:
            seqs.append({"input_ids": e["chosen_ids"], "labels": e["chosen_labels"]})
            seqs.append({"input_ids": e["rejected_ids"], "labels": e["rejected_labels"]})
        batch = PaddingFreeCollator(self.pad_token_id, self.padding_free)(seqs)
        if all("ref_chosen" in e for e in examples):
            batch["ref_logps"] = torch.tensor([[e["ref_chosen"], e["ref_rejected"]] for e in examples],
                                              dtype=torch.float32)
        return batch


def sequence_logps(model, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token log-probabilities, answer-token count) per sequence, shape (2B,) each, in batch order;
    the LM head projects only at positions whose next token is an answer token."""
    labels = batch["labels"]
    logits, targets, keep, _ = labelled_logits(model, {k: v for k, v in batch.items() if k != "ref_logps"})
    token_logps = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    # which sequence each kept position belongs to: a padding-free row restarts its position ids per sequence
    if labels.shape[0] == 1 and "position_ids" in batch:
        seq_ids = torch.cumsum((batch["position_ids"][0] == 0).long(), 0) - 1
        seq_of_kept = seq_ids[keep[0]]
        n_seq = int(seq_ids[-1]) + 1
    else:
        seq_ids = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
        seq_of_kept = seq_ids[keep]  # row-major, the order the kept logits come in
        n_seq = int(labels.shape[0])
    zeros = torch.zeros(n_seq, device=logits.device, dtype=token_logps.dtype)
    sums = zeros.index_add(0, seq_of_kept, token_logps)
    counts = zeros.index_add(0, seq_of_kept, torch.ones_like(token_logps))
    return sums, counts


def preference_loss(objective: str, loss_type: str, beta: float, logps: torch.Tensor, counts: torch.Tensor,
                    ref_logps: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of a batch of pairs and the numbers people watch. ``logps``/``counts``: (2B,) in [c, r, c, r …]
    order; ``ref_logps``: (B, 2) for DPO."""
    chosen, rejected = logps[0::2], logps[1::2]
    stats: dict[str, float] = {"logps/chosen": chosen.mean().item(), "logps/rejected": rejected.mean().item()}
    if objective == "dpo":
        if ref_logps is None:
            raise RuntimeError("DPO needs the reference log-probabilities of every pair")
        ref = ref_logps.to(logps.device, logps.dtype)
        chosen_reward = beta * (chosen - ref[:, 0])
        rejected_reward = beta * (rejected - ref[:, 1])
        logits = (chosen - ref[:, 0]) - (rejected - ref[:, 1])
        if loss_type == "ipo":
            # IPO averages log-probabilities over the answer's tokens (Azar et al.)
            avg = (logps / counts.clamp(min=1))
            ref_avg = ref.reshape(-1) / counts.clamp(min=1)
            logits = (avg[0::2] - ref_avg[0::2]) - (avg[1::2] - ref_avg[1::2])
            losses = (logits - 1 / (2 * beta)) ** 2
        elif loss_type == "hinge":
            losses = torch.relu(1 - beta * logits)
        else:
            losses = -F.logsigmoid(beta * logits)
        loss = losses.mean()
    else:  # orpo: NLL on the chosen answers + beta * odds-ratio term, no reference
        avg_c = chosen / counts[0::2].clamp(min=1)
        avg_r = rejected / counts[1::2].clamp(min=1)
        # log(p / (1 - p)) with p = exp(mean token log-probability); log1p(-exp(x)) stays finite for x < 0
        log_odds = (avg_c - avg_r) - (torch.log1p(-torch.exp(avg_c).clamp(max=1 - 1e-6))
                                      - torch.log1p(-torch.exp(avg_r).clamp(max=1 - 1e-6)))
        ratio = F.logsigmoid(log_odds)
        nll = -chosen.sum() / counts[0::2].sum().clamp(min=1)
        loss = nll - beta * ratio.mean()
        chosen_reward, rejected_reward = beta * avg_c, beta * avg_r
        stats.update({"nll_loss": nll.item(), "log_odds_ratio": ratio.mean().item()})
    stats.update({
        "rewards/chosen": chosen_reward.mean().item(),
        "rewards/rejected": rejected_reward.mean().item(),
        "rewards/margins": (chosen_reward - rejected_reward).mean().item(),
        "rewards/accuracies": (chosen_reward > rejected_reward).float().mean().item(),
    })
    return loss, stats


@torch.no_grad()
def reference_logps(model, examples: list[dict[str, Any]], collator: PairCollator, batch_pairs: int = 4,
                    on_progress=None) -> list[tuple[float, float]]:
    """Each pair's (chosen, rejected) log-probability under ``model`` as it is now, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[tuple[float, float]] = []
    try:
        for i in range(0, len(examples), batch_pairs):
            chunk = [{k: v for k, v in e.items() if not k.startswith("ref_")} for e in examples[i:i + batch_pairs]]
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collator(chunk).items()}
            sums, _ = sequence_logps(model, batch)
            pairs = sums.reshape(-1, 2).tolist()
            out.extend((float(c), float(r)) for c, r in pairs)
            if on_progress:
                on_progress(len(out), len(examples))
    finally:
        model.train(was_training)
    return out


def load_or_compute_reference(run_dir: Path, model, examples: list[dict[str, Any]], collator: PairCollator,
                              fingerprint: str, log=print) -> None:
    """Attach ``ref_chosen`` / ``ref_rejected`` to every example: read from the run's folder when a previous
    attempt computed them for the same examples (a resume), else computed now and written there."""
    path = run_dir / REFERENCE_FILE
    values = None
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("fingerprint") == fingerprint and len(saved.get("logps", [])) == len(examples):
                values = [tuple(x) for x in saved["logps"]]
                log(f"reference log-probabilities: read {len(values)} pairs from {path.name}")
        except (OSError, ValueError):
            values = None
    if values is None:
        import time

        t0 = time.time()
        last = [t0]

        def progress(done, total):
            if time.time() - last[0] > 10:
                last[0] = time.time()
                log(f"reference log-probabilities: {done}/{total} pairs")

        values = reference_logps(model, examples, collator, on_progress=progress)
        tmp = path.with_suffix(".json.partial")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "logps": values}), encoding="utf-8")
        tmp.replace(path)
        log(f"reference log-probabilities: {len(values)} pairs in {time.time() - t0:.1f}s (the model at step 0)")
    for e, (c, r) in zip(examples, values):
        if not (math.isfinite(c) and math.isfinite(r)):
            raise ValueError("a reference log-probability is not finite; check the data and the model")
        e["ref_chosen"], e["ref_rejected"] = c, r


def examples_fingerprint(examples: list[dict[str, Any]]) -> str:
    import hashlib

    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e["chosen_ids"], e["rejected_ids"], e["chosen_labels"][-1]]).encode())
    return h.hexdigest()[:32]
