"""A request's text as tokens the way the harness encodes it for a causal model (``encode_pair``), and the model's
max length as the harness reads it.
"""
from __future__ import annotations

from core.evaluate.multiple_choice.prompts import MultipleChoiceError

DEFAULT_MAX_LENGTH = 2048  # the harness's fallback when neither the config nor the tokenizer names a length
_TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no limit" model_max_length


def _prefix_token_id(tokenizer) -> int | None:
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None else getattr(tokenizer, "eos_token_id", None)


def _encode(tokenizer, text: str) -> list[int]:
    """The tokenizer's default encoding (its own special tokens), unless the text already starts with the prefix
    token's text."""
    prefix = _prefix_token_id(tokenizer)
    if prefix is not None and text.startswith(tokenizer.decode(prefix)):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as the harness builds them for a causal model."""
    if context == "":
        cont = list(tokenizer.encode(continuation, add_special_tokens=False))
        if not cont:
            raise MultipleChoiceError(f"the continuation {continuation!r} encodes to no tokens")
        prefix = _prefix_token_id(tokenizer)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def model_max_length(model, tokenizer) -> int:
    """The harness's max length: the config's n_positions / max_position_embeddings / n_ctx (of ``text_config`` for
    composite models), else the tokenizer's model_max_length, else 2048."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    value = getattr(tokenizer, "model_max_length", None)
    if value is not None and value != _TOKENIZER_INFINITY:
        return int(value)
    return DEFAULT_MAX_LENGTH
