"""Rows → token ids + labels for training (loss on assistant tokens only), and the padding-free collator."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from core.data.chat import tokenize_conversation

IGNORE_INDEX = -100


def tokenize_rows(tokenizer, rows: list[dict[str, Any]],
                  max_length: int) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Tokenise normalised rows. Chat rows train on assistant tokens; ``{"text": ...}`` rows on every token.

    Returns the examples and counts (rows, truncated, skipped_no_loss_tokens, tokens, loss_tokens).
    """
    examples: list[dict[str, list[int]]] = []
    counts = {"rows": len(rows), "truncated": 0, "skipped_no_loss_tokens": 0, "tokens": 0, "loss_tokens": 0}
    eos = tokenizer.eos_token_id
    for row in rows:
        if "messages" in row:
            tc = tokenize_conversation(tokenizer, row["messages"], max_length=max_length, tools=row.get("tools"))
            ids, mask, truncated = tc.input_ids, tc.assistant_mask, tc.truncated
        else:
            ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
            truncated = len(ids) > max_length
            ids = ids[:max_length]
            mask = [1] * len(ids)
        # the first token is never predicted; a row needs at least one loss token after it
        if sum(mask[1:]) == 0:
            counts["skipped_no_loss_tokens"] += 1
            continue
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        examples.append({"input_ids": ids, "labels": labels})
        counts["truncated"] += int(truncated)
        counts["tokens"] += len(ids)
        counts["loss_tokens"] += sum(mask[1:])
    return examples, counts


@dataclass
class PaddingFreeCollator:
    """Concatenate a batch into one row with restarting ``position_ids`` and no attention mask.

    transformers detects the restarts and builds a block-diagonal causal mask (SDPA/eager) or varlen boundaries
    (flash attention), so examples never attend to each other, and no FLOP is spent on padding. The first label of
    every example is masked so no example learns to predict across a boundary.
    """

    pad_token_id: int
    padding_free: bool = True

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        if self.padding_free:
            ids = [torch.tensor(e["input_ids"], dtype=torch.long) for e in examples]
            labels = [torch.tensor(e["labels"], dtype=torch.long) for e in examples]
            for lab in labels:
                lab[0] = IGNORE_INDEX
            position_ids = [torch.arange(len(x), dtype=torch.long) for x in ids]
            lengths = torch.tensor([0] + [len(x) for x in ids])
            cu_seq_lens = lengths.cumsum(0).to(torch.int32)  # example boundaries, for varlen attention kernels
            max_len = int(lengths.max())
            return {
                "input_ids": torch.cat(ids)[None],
                "labels": torch.cat(labels)[None],
                "position_ids": torch.cat(position_ids)[None],
                "cu_seq_lens_q": cu_seq_lens,
                "cu_seq_lens_k": cu_seq_lens,
                "max_length_q": max_len,
                "max_length_k": max_len,
            }
        longest = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def count_real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that are not padding (a padding-free batch has none)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def labelled_logits(model, inputs: dict[str, torch.Tensor]):
    """The model's logits only at positions whose next token has a label, in row-major order, as float32 (n, V);
    the targets they predict (n,); the positions kept (B, L) and the model outputs. ``inputs`` holds ``labels`` and
    the model's inputs; nothing else."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    shift_labels = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = shift_labels != IGNORE_INDEX
    outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
    return logits, shift_labels[shift_labels != IGNORE_INDEX], keep, outputs


def labelled_positions_loss(model, inputs: dict[str, torch.Tensor], num_items_in_batch=None):
    """Causal-LM cross-entropy that projects through the LM head only at positions whose next token has a label.

    With a 49k-token vocabulary the LM head is a large share of a small model's FLOPs; prompts, system text and
    padding carry no loss, so their logits are never computed. Returns (loss, model outputs).
    """
    logits, targets, _keep, outputs = labelled_logits(model, inputs)
    loss_sum = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    if num_items_in_batch is None:
        denom = torch.tensor(max(targets.numel(), 1), device=loss_sum.device)
    else:
        denom = torch.as_tensor(num_items_in_batch, device=loss_sum.device).clamp(min=1)
    return loss_sum / denom, outputs
