"""The rows a training run reads: a stored dataset's split, or a data file normalised in memory. A dataset whose kind
does not fit the objective (pairs for SFT, conversations for DPO / ORPO, multiple-choice questions) is refused with
what to do instead.
"""
from __future__ import annotations

from core.data import formats as F
from core.data.errors import DatasetError
from core.data.prepare import prepare_dataset, resolve_drop
from core.data.stored import get_dataset, read_split

MULTIPLE_CHOICE_REFUSAL = ("holds multiple-choice questions (for Evaluate); supervised fine-tuning needs "
                           "conversations with assistant answers")
PREFERENCE_FOR_SFT = ("holds preference pairs (chosen/rejected): train it with objective dpo or orpo; SFT and GRPO "
                      "need conversations with an assistant answer")
SFT_FOR_PREFERENCE = ("holds no preference pairs: {objective} needs rows with a chosen and a rejected answer (the "
                      "Data tab's 'preference' format); train conversations with objective sft")


def load_training_rows(ref: str | int, split: str = "train", objective: str = "sft") -> list[dict]:
    """Normalised rows for training (see the package docstring). ``objective`` dpo / orpo: preference pairs only
    (``{"prompt": [...], "chosen": [...], "rejected": [...]}``); sft: conversations or text, never pairs."""
    ref_s = str(ref).strip()
    wants_pairs = objective in F.PREFERENCE_OBJECTIVES
    if ref_s.isdigit():
        ds = get_dataset(ref_s)
        if wants_pairs and ds.kind != "preference":
            raise DatasetError(f"dataset {ds.id} " + SFT_FOR_PREFERENCE.format(objective=objective.upper()))
        if ds.kind == "preference" and not wants_pairs:
            raise DatasetError(f"dataset {ds.id} {PREFERENCE_FOR_SFT}")
        if ds.kind == "multiple_choice":
            raise DatasetError(f"dataset {ds.id} {MULTIPLE_CHOICE_REFUSAL}")
        rows = read_split(ds, split)
        if not rows and split == "train":
            raise DatasetError(f"dataset {ds.id} has no training rows")
        return rows
    if not ref_s:
        raise DatasetError("no dataset given: pass a dataset id or a data file path")
    prep = prepare_dataset(ref_s)
    if wants_pairs and prep.kind != "preference":
        raise DatasetError(f"{ref_s} " + SFT_FOR_PREFERENCE.format(objective=objective.upper()))
    if prep.kind == "preference" and not wants_pairs:
        raise DatasetError(f"{ref_s} {PREFERENCE_FOR_SFT}")
    if prep.kind == "multiple_choice":
        raise DatasetError(f"{ref_s} {MULTIPLE_CHOICE_REFUSAL}")
    drop = resolve_drop(True) - {"too_long"}
    usable = [pr for pr in prep.rows if not any(c in drop for c in pr.codes)]
    if not usable:
        first = prep.problems[0].reason if prep.problems else "?"
        raise DatasetError(f"no usable rows in {ref_s} (first problem: {first})")
    if split == "train":
        if any(pr.split for pr in usable):
            return [pr.row for pr in usable if pr.split in (None, "train")]
        return [pr.row for pr in usable]
    return [pr.row for pr in usable if pr.split == split]
