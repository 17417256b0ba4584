"""Train / validation / test splits: by ratio + seed (reproducible), or from an existing split column."""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

SPLITS = ("train", "validation", "test")
ALL = "all"  # every row of a stored version, in the source's order (what an evaluation scores by default)
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation", "eval": "validation",
    "test": "test", "testing": "test", "heldout": "test", "held_out": "test",
}
SPLIT_COLUMNS = ("split", "subset", "partition")


@dataclass(frozen=True)
class SplitSpec:
    """``validation``/``test`` are fractions of the rows; ``use_column``: take the split from a 'split' column when the
    data has one (or from the Hub dataset's own splits). Fractions may add up to 1 (no training rows: a benchmark
    kept whole for evaluation, e.g. ``test=1``)."""

    validation: float = 0.1
    test: float = 0.0
    seed: int = 42
    use_column: bool = True

    def __post_init__(self):
        for name in ("validation", "test"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} fraction must be from 0 to 1, got {v}")
        if self.validation + self.test > 1.0 + 1e-9:
            raise ValueError(f"validation + test fractions ({self.validation} + {self.test}) add up to more than every "
                             "row; lower one (validation 0 with test 1 puts every row in test)")

    @property
    def takes_every_row(self) -> bool:
        """validation + test = 1: no training rows."""
        return self.validation + self.test >= 1.0 - 1e-9

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def coerce(cls, value) -> SplitSpec:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**{k: value[k] for k in ("validation", "test", "seed", "use_column") if k in value})
        raise TypeError(f"split must be a SplitSpec or a dict, got {type(value).__name__}")


def normalise_split_name(value) -> str | None:
    if value is None:
        return None
    return SPLIT_ALIASES.get(str(value).strip().lower())


def assign_splits(n: int, spec: SplitSpec, given: list[str | None] | None = None) -> list[str]:
    """The split of each of ``n`` rows. Rows with a ``given`` split keep it (when spec.use_column); the rest are
    shuffled with ``spec.seed`` and cut by the ratios. The same n, spec and given always give the same answer."""
    out: list[str | None] = [None] * n
    if given and spec.use_column and any(g is not None for g in given):
        for i, g in enumerate(given):
            out[i] = g
        rest = [i for i in range(n) if out[i] is None]
        if not rest:
            return out  # type: ignore[return-value]
        # rows without a split column value: training rows (a partial split column means 'the rest is train')
        for i in rest:
            out[i] = "train"
        return out  # type: ignore[return-value]
    order = list(range(n))
    random.Random(spec.seed).shuffle(order)  # noqa: S311 - a reproducible split, not a secret
    n_val = int(round(n * spec.validation))
    n_test = int(round(n * spec.test))
    if spec.takes_every_row:  # no training rows asked for: validation gets its share, test the rest
        n_val = min(n_val, n)
        n_test = n - n_val
    elif n - n_val - n_test < 1:  # tiny datasets: training keeps at least one row
        n_val = max(0, min(n_val, n - 1))
        n_test = max(0, min(n_test, n - 1 - n_val))
    for rank, i in enumerate(order):
        out[i] = "validation" if rank < n_val else ("test" if rank < n_val + n_test else "train")
    return out  # type: ignore[return-value]


SPLIT_CODES = "tvx"  # one character per row in a version's ``row_splits``: train, validation, test (SPLITS order)


def encode_row_splits(assignment: list[str]) -> str:
    """The split of each kept row in source order as one string (a version's meta.json keeps it, so ``all`` reads
    the rows back in the source's order)."""
    return "".join(SPLIT_CODES[SPLITS.index(s)] for s in assignment)


def decode_row_splits(code: str) -> list[str]:
    return [SPLITS[SPLIT_CODES.index(c)] for c in code]
