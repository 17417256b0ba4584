"""Prompt templates for models that ship without a chat template (base models: GPT-2, Mistral-7B-v0.1, Llama-3 base).

A template is chosen once, per run (``TrainConfig.chat_template``), and applied to the tokenizer before training:
the tokenizer gets the Jinja ``chat_template``, the template's special tokens (added when the vocabulary lacks them)
and the EOS token that ends every assistant turn. That tokenizer is saved with the adapter / model, so every later
consumer — the Data tab's preview, Evaluate, the Playground, merge, GGUF export, the servers — renders exactly what
training rendered, from the files, with ``apply_chat_template``.

Choices: ``chatml``, ``llama3``, ``mistral``, ``alpaca`` (plain text, no new tokens), or a model reference — a Hub id,
a model folder, or ``default`` — whose chat template (and the special tokens it uses) is copied, like TRL's
``clone_chat_template`` but without padding the vocabulary with dummy tokens.

New tokens need embeddings: :func:`grow_vocab` adds rows (initialised to the mean of the existing rows, so every
process that grows the same model gets the same numbers) and the run trains just those rows (PEFT
``trainable_token_indices``; a full fine-tune trains everything anyway). Which rows those are is written to
``fts_template.json`` beside the adapter, which is how inference and merge know to grow the base first.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATE_META = "fts_template.json"
FALLBACK_EOS = "<|endoftext|>"


class TemplateError(ValueError):
    """A template choice that cannot be applied; the message says what to pick instead."""


@dataclass(frozen=True)
class Template:
    name: str
    label: str
    jinja: str
    special_tokens: tuple[str, ...] = ()
    eos: str | None = None  # the token that ends an assistant turn; None: the tokenizer's own EOS
    note: str = ""


CHATML = Template(
    "chatml", "ChatML (<|im_start|> … <|im_end|>)",
    "{%- for message in messages %}"
    "{%- if loop.first and tools and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou can call these tools (answer with a JSON object naming one and its arguments):\\n'"
    " ~ (tools | tojson) ~ '<|im_end|>\\n' }}{%- endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
    "{%- if loop.first and tools and message['role'] == 'system' %}"
    "{{ '\\n\\nYou can call these tools (answer with a JSON object naming one and its arguments):\\n'"
    " ~ (tools | tojson) }}{%- endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}",
    ("<|im_start|>", "<|im_end|>"), "<|im_end|>",
    "two special tokens; every turn ends with <|im_end|>, the EOS")

LLAMA3 = Template(
    "llama3", "Llama-3 (<|start_header_id|> … <|eot_id|>)",
    "{%- if bos_token %}{{ bos_token }}{%- endif %}"
    "{%- for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] }}"
    "{%- if loop.first and tools %}"
    "{{ '\\n\\nYou can call these tools (answer with a JSON object naming one and its arguments):\\n'"
    " ~ (tools | tojson) }}{%- endif %}"
    "{{ '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}",
    ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>",
    "three special tokens; every turn ends with <|eot_id|>, the EOS")

MISTRAL = Template(
    "mistral", "Mistral ([INST] … [/INST])",
    "{%- if bos_token %}{{ bos_token }}{%- endif %}"
    "{%- set ns = namespace(system='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{%- set ns.system = message['content'] %}"
    "{%- elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{%- else %}"
    "{{ '[INST] ' }}{%- if ns.system %}{{ ns.system + '\\n\\n' }}{%- set ns.system = '' %}{%- endif %}"
    "{%- if loop.first and tools %}"
    "{{ 'You can call these tools (answer with a JSON object naming one and its arguments):\\n'"
    " ~ (tools | tojson) ~ '\\n\\n' }}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{{ 'Tool result: ' }}{%- endif %}"
    "{{ message['content'] + ' [/INST]' }}"
    "{%- endif %}"
    "{%- endfor %}",
    (), None, "plain text markers, no new tokens; assistant turns end with the tokenizer's EOS")

ALPACA = Template(
    "alpaca", "Alpaca-style plain text (### Instruction: … ### Response:)",
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{%- if loop.first and tools %}"
    "{{ 'You can call these tools (answer with a JSON object naming one and its arguments):\\n'"
    " ~ (tools | tojson) ~ '\\n\\n' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
    "{%- else %}"
    "{%- if loop.first and tools %}"
    "{{ 'You can call these tools (answer with a JSON object naming one and its arguments):\\n'"
    " ~ (tools | tojson) ~ '\\n\\n' }}{%- endif %}"
    "{{ ('### Tool result:\\n' if message['role'] == 'tool' else '### Instruction:\\n') + message['content']"
    " + '\\n\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '### Response:\\n' }}{%- endif %}",
    (), None, "plain text, no new tokens; each answer ends with the tokenizer's EOS")

TEMPLATES: dict[str, Template] = {t.name: t for t in (CHATML, LLAMA3, MISTRAL, ALPACA)}
CHOICE_HELP = ("chatml, llama3, mistral, alpaca, or a model id / folder / 'default' to copy the chat template from")


def describe_choices() -> list[tuple[str, str]]:
    """(name, label) of the built-in templates, for menus."""
    return [(t.name, t.label) for t in TEMPLATES.values()]


OWN = "model"  # the menu value for "the model's own chat template"


def template_menu() -> list[tuple[str, str]]:
    """(label, value) pairs for a "Prompt template" dropdown: the model's own, then the built-ins with their cost."""
    out = [("the model's own chat template", OWN)]
    for t in TEMPLATES.values():
        cost = f"+{len(t.special_tokens)} new tokens to train" if t.special_tokens else "no new tokens"
        out.append((f"{t.label} · {cost}", t.name))
    return out


def normalise_choice(choice: str | None) -> str | None:
    """None / '' / 'none' / 'model' (the model's own template) → None; a built-in name in any case → its name;
    anything else is a model reference to copy from (kept as typed)."""
    text = (choice or "").strip()
    if not text or text.lower() in ("none", "model", "own", "model's own"):
        return None
    if text.lower() in TEMPLATES:
        return text.lower()
    return text


# ---- reading what a model folder already has -----------------------------------------------------------------------

def chat_template_in_folder(folder: str | Path) -> str | None:
    """The chat template saved in a tokenizer folder (tokenizer_config.json, chat_template.jinja or .json)."""
    d = Path(folder)
    cfg = d / "tokenizer_config.json"
    if cfg.is_file():
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError):
            value = None
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list):  # named templates: the default one
            for item in value:
                if isinstance(item, dict) and item.get("name") == "default" and item.get("template"):
                    return str(item["template"])
    if (d / "chat_template.jinja").is_file():
        text = (d / "chat_template.jinja").read_text(encoding="utf-8")
        return text if text.strip() else None
    if (d / "chat_template.json").is_file():
        try:
            value = json.loads((d / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError):
            value = None
        return value if isinstance(value, str) and value.strip() else None
    return None


def model_has_chat_template(ref: str) -> bool | None:
    """Whether a base model reference comes with a chat template: True / False, or None when that cannot be known
    here without a download (a Hub id that is not in the local cache)."""
    from core.models import ModelNotFoundError, resolve_model

    try:
        resolved = resolve_model(ref, prepare_default=False)
    except ModelNotFoundError:
        return None
    if resolved.kind == "default":
        return True  # SmolLM2-135M-Instruct: ChatML
    if resolved.is_local:
        return chat_template_in_folder(resolved.path) is not None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    found = False
    for name in ("tokenizer_config.json", "chat_template.jinja", "chat_template.json"):
        cached = try_to_load_from_cache(resolved.ref, name)
        if isinstance(cached, str):
            found = True
            if chat_template_in_folder(Path(cached).parent) is not None:
                return True
    return False if found else None


# ---- applying a template to a tokenizer ----------------------------------------------------------------------------

@dataclass
class AppliedTemplate:
    """What applying a template did to a tokenizer."""

    name: str  # built-in name, or "copy:<ref>"
    template: str  # the Jinja text now on the tokenizer
    new_tokens: list[str] = field(default_factory=list)  # added to the vocabulary (need new embedding rows)
    template_tokens: list[str] = field(default_factory=list)  # the special tokens the template writes
    eos_token: str | None = None
    eos_added: bool = False

    def summary(self) -> str:
        new = f"{len(self.new_tokens)} new token(s) {', '.join(self.new_tokens)}" if self.new_tokens else \
            "no new tokens"
        return f"prompt template {self.name}: {new}; assistant turns end with {self.eos_token}"


def _vocab(tokenizer) -> dict[str, int]:
    return tokenizer.get_vocab()


def _add_special(tokenizer, tokens: Sequence[str]) -> list[str]:
    from tokenizers import AddedToken

    vocab = _vocab(tokenizer)
    missing = [t for t in dict.fromkeys(tokens) if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    return missing


def _source_template(ref: str):
    """(template text, special tokens it writes, EOS) of the model whose chat template is copied."""
    from core.models import ModelNotFoundError, load_tokenizer, resolve_model

    try:
        resolved = resolve_model(ref)
        src = load_tokenizer(resolved)
    except ModelNotFoundError as exc:
        raise TemplateError(f"cannot copy the chat template from '{ref}': {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a folder that is not a tokenizer
        raise TemplateError(f"cannot copy the chat template from '{ref}': {type(exc).__name__}: {exc}") from None
    try:
        text = src.get_chat_template()
    except ValueError:
        text = None
    if not text:
        raise TemplateError(f"'{ref}' has no chat template to copy; pick one of {', '.join(TEMPLATES)}")
    specials = [t.content for t in src.added_tokens_decoder.values() if t.special and t.content in text]
    eos = src.eos_token
    if eos and eos not in specials and eos in text:
        specials.append(eos)
    return text, specials, eos


def apply_template(tokenizer, choice: str | None) -> AppliedTemplate | None:
    """Put the chosen template on ``tokenizer`` (in place). None when the choice is the model's own template."""
    name = normalise_choice(choice)
    if name is None:
        return None
    eos_added = False
    if name in TEMPLATES:
        t = TEMPLATES[name]
        text, tokens, eos = t.jinja, list(t.special_tokens), t.eos
        label = name
    else:
        text, tokens, eos = _source_template(name)
        label = f"copy:{name}"
    new = _add_special(tokenizer, tokens)
    if eos is None:
        eos = tokenizer.eos_token
        if eos is None:
            eos = FALLBACK_EOS
            new += _add_special(tokenizer, [eos])
            eos_added = True
    elif eos not in tokens:
        new += _add_special(tokenizer, [eos])
    tokenizer.eos_token = eos
    if tokenizer.pad_token is None or (tokenizer.pad_token_id is not None and eos_added):
        tokenizer.pad_token = eos
    tokenizer.chat_template = text
    return AppliedTemplate(label, text, new, tokens, eos, eos_added)


def check_renders(tokenizer) -> None:
    """A template that cannot render a simple conversation is refused before any training starts."""
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
             {"role": "assistant", "content": "a"}]
    try:
        tokenizer.apply_chat_template(probe, tokenize=False)
        tokenizer.apply_chat_template(probe[:2], tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - Jinja errors, raise_exception() of strict templates
        raise TemplateError(f"the prompt template cannot render a system + user + assistant conversation: "
                            f"{type(exc).__name__}: {str(exc)[:200]}") from None


def template_for_model(ref: str, choice: str | None):
    """The tokenizer of ``ref`` with ``choice`` applied (the Data tab's preview, Estimate): (tokenizer, applied)."""
    from core.models import load_tokenizer

    tok = load_tokenizer(ref)
    applied = apply_template(tok, choice)
    return tok, applied


def suggest_choice(tokenizer) -> str:
    """A sensible template for a tokenizer without one: a template whose special tokens the vocabulary already has
    (Qwen base: ChatML, Llama-3 base: llama3), else the plain-text Alpaca style (no new tokens)."""
    vocab = _vocab(tokenizer)
    for t in (LLAMA3, CHATML):
        if all(tok in vocab for tok in t.special_tokens):
            return t.name
    return ALPACA.name


# ---- embeddings for new tokens -------------------------------------------------------------------------------------

def grow_vocab(model, num_tokens: int) -> list[int]:
    """Give ``model`` at least ``num_tokens`` embedding rows (and LM-head rows), new rows = the mean of the old ones.
    Works on plain transformers models and on core.inference's wrapped linears; keeps tied weights tied. Returns the
    new row indices (empty when the model was big enough)."""
    import torch
    from torch import nn

    emb = model.get_input_embeddings()
    old = emb.weight.shape[0]
    if num_tokens <= old:
        return []
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    extra = num_tokens - old
    with torch.no_grad():
        w = emb.weight
        mean = w.float().mean(0, keepdim=True).to(w.dtype)
        emb.weight = nn.Parameter(torch.cat([w.detach(), mean.expand(extra, -1)]), requires_grad=w.requires_grad)
        emb.num_embeddings = num_tokens
        if head is not None:
            if tied:
                head.weight = emb.weight
            else:
                hw = head.weight
                hmean = hw.float().mean(0, keepdim=True).to(hw.dtype)
                head.weight = nn.Parameter(torch.cat([hw.detach(), hmean.expand(extra, -1)]),
                                           requires_grad=hw.requires_grad)
            if getattr(head, "bias", None) is not None:
                b = head.bias
                head.bias = nn.Parameter(torch.cat([b.detach(), b.detach().mean().expand(extra)]),
                                         requires_grad=b.requires_grad)
            if hasattr(head, "out_features"):
                head.out_features = num_tokens
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    cfg.vocab_size = num_tokens
    return list(range(old, num_tokens))


def embedding_module_names(model) -> tuple[str | None, str | None, bool]:
    """(input embedding module name, output embedding module name, tied) of a transformers model."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    tied = head is not None and head.weight is emb.weight
    return names.get(id(emb)), (names.get(id(head)) if head is not None else None), tied


# ---- the record beside an adapter / model --------------------------------------------------------------------------

def write_meta(folder: str | Path, applied: AppliedTemplate, *, trained_token_ids: list[int], vocab_size: int,
               tokenizer) -> None:
    data = {"template": applied.name, "new_tokens": applied.new_tokens, "template_tokens": applied.template_tokens,
            "eos_token": applied.eos_token, "eos_token_id": tokenizer.convert_tokens_to_ids(applied.eos_token),
            "trained_token_ids": trained_token_ids, "vocab_size": vocab_size}
    Path(folder, TEMPLATE_META).write_text(json.dumps(data, indent=2), encoding="utf-8")


def read_meta(folder: str | Path | None) -> dict[str, Any] | None:
    if not folder:
        return None
    p = Path(folder) / TEMPLATE_META
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
