"""Prompts: a conversation through the model's own chat template, and the tokens that end an answer."""
from __future__ import annotations

from collections.abc import Sequence

from core.generate.cache import LoadedBase
from core.generate.errors import GenerateError


def render_prompt(tokenizer, messages: Sequence[dict]) -> str:
    """The conversation so far + the assistant's generation prompt, through the model's own chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise GenerateError("this model's tokenizer has no chat template, so a conversation cannot be turned into "
                            "its prompt; use a chat/instruct model or a run trained with a prompt template")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def stop_token_ids(loaded: LoadedBase, tokenizer=None) -> set[int]:
    ids: set[int] = set()
    tok = tokenizer if tokenizer is not None else loaded.tokenizer
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen = getattr(loaded.model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    for x in eos if isinstance(eos, (list, tuple)) else [eos]:
        if x is not None:
            ids.add(int(x))
    for t in ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>"):
        tid = tok.convert_tokens_to_ids(t) if t in tok.get_vocab() else None
        if tid is not None and tid != tok.unk_token_id:
            ids.add(int(tid))
    return ids
