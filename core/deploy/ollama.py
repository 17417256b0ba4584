"""The Ollama ``Modelfile`` that goes with an exported GGUF: ``FROM`` the file, a ``TEMPLATE`` translated from the
model's chat template only where rendering proves it equal, the default ``SYSTEM`` prompt, stop tokens and sampling
defaults. Create the model with ``ollama create <name> -f Modelfile``."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from core.deploy.gguf_folder import GGUFExportError, chat_template, read_json

MODELFILE_NAME = "Modelfile"


# Ollama (Go text/template) equivalents of chat formats, used only after the model's own Jinja template has been
# checked to render sample conversations exactly as these do (see _detect_chat_format).
_OLLAMA_TEMPLATES = {
    "chatml": (
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
        "<|im_start|>{{ .Role }}\n"
        "{{ .Content }}<|im_end|>\n"
        "{{ if and $last (ne .Role \"assistant\") }}<|im_start|>assistant\n"
        "{{ end }}\n"
        "{{- end }}"
    ),
    "llama3": (
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
        "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>\n"
        "{{- if and $last (ne .Role \"assistant\") }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{{ end }}\n"
        "{{- end }}"
    ),
}
_FORMAT_STOPS = {"chatml": ["<|im_end|>", "<|im_start|>"],
                 "llama3": ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]}


def _turns(fmt: str, messages: list[dict], add_generation_prompt: bool) -> str:
    """What the Ollama template above renders for these messages (BOS excluded: llama.cpp adds it)."""
    if fmt == "chatml":
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
    text = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
    return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


def _render(template: str, messages: list[dict], add_generation_prompt: bool, bos: str, eos: str) -> str:
    """Render a HF chat template as transformers does (sandboxed Jinja, trim_blocks + lstrip_blocks)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos, eos_token=eos)


def _detect_chat_format(template: str | None, bos: str, eos: str) -> tuple[str | None, str | None]:
    """``(format, default system prompt)`` when the Jinja template provably renders like a known Ollama template.

    The template is rendered for a conversation with a system message and for one without; it must produce exactly
    the known format's turns (after an optional leading BOS), optionally preceded — when no system message is given —
    by one system turn, whose text is then the template's default system prompt. Anything else returns
    ``(None, None)`` and the Modelfile relies on the template embedded in the GGUF.
    """
    if not template:
        return None, None
    convo = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Hi there"},
             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    no_system = convo[1:]

    def variants(out: str) -> list[str]:
        # the output as it is, and without a leading BOS (llama.cpp adds BOS itself). Both are tried because a
        # model's BOS can be a turn marker: SmolLM2's is <|im_start|>.
        return [out, out[len(bos):]] if bos and out.startswith(bos) else [out]

    for fmt in _OLLAMA_TEMPLATES:
        try:
            if not all(_turns(fmt, convo, gen) in variants(_render(template, convo, gen, bos, eos))
                       for gen in (True, False)):
                continue
            rendered = variants(_render(template, no_system, True, bos, eos))
        except Exception:  # noqa: BLE001, S112 - a template that does not render for this format is just not this format
            continue
        tail = _turns(fmt, no_system, True)
        if tail in rendered:
            return fmt, None
        prefix, suffix = ("<|im_start|>system\n", "<|im_end|>\n") if fmt == "chatml" else (
            "<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>")
        for out in rendered:
            head = out[: len(out) - len(tail)] if out.endswith(tail) else ""
            if head.startswith(prefix) and head.endswith(suffix) and len(head) >= len(prefix) + len(suffix):
                system = head[len(prefix): len(head) - len(suffix)]
                if prefix not in system and suffix not in system:
                    return fmt, system
    return None, None


def _token_text(tokenizer_json: dict, token_id: int) -> str | None:
    for a in tokenizer_json.get("added_tokens") or []:
        if int(a["id"]) == token_id:
            return a["content"]
    for t, i in ((tokenizer_json.get("model") or {}).get("vocab") or {}).items():
        if i == token_id:
            return t
    return None


def _special_tokens(model_dir: Path) -> tuple[str, str, list[str]]:
    """``(bos, eos, end-of-turn token texts)`` from tokenizer_config.json, config.json and generation_config.json."""
    def text(entry) -> str:
        return entry.get("content", "") if isinstance(entry, dict) else (entry or "")

    tc = read_json(model_dir / "tokenizer_config.json", "tokenizer config") \
        if (model_dir / "tokenizer_config.json").is_file() else {}
    tj = read_json(model_dir / "tokenizer.json", "tokenizer") if (model_dir / "tokenizer.json").is_file() else {}
    bos, eos = text(tc.get("bos_token")), text(tc.get("eos_token"))
    stops = [eos] if eos else []
    for name in ("generation_config.json", "config.json"):
        if (model_dir / name).is_file():
            ids = read_json(model_dir / name, name).get("eos_token_id")
            for i in ids if isinstance(ids, list) else [ids]:
                if isinstance(i, int) and (t := _token_text(tj, i)):
                    stops.append(t)
    return bos, eos, list(dict.fromkeys(stops))


def _go_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def write_modelfile(gguf_path: str | Path, model_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write an Ollama ``Modelfile`` beside the GGUF (or in ``out_dir``); return its path.

    It holds ``FROM`` with the GGUF's path relative to the Modelfile (``./<file>.gguf`` beside it), a ``TEMPLATE`` in
    Ollama's Go template syntax when the model's chat template is one this module can translate and has verified by
    rendering (ChatML ``<|im_start|>`` models such as SmolLM2, and Llama 3), ``SYSTEM`` with the template's default
    system prompt if it inserts one, ``PARAMETER stop`` lines for the end-of-turn tokens, and sampling defaults from
    generation_config.json. A template it cannot translate is left out, with a comment saying Ollama will use the
    chat template embedded in the GGUF instead.
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    model_dir = Path(model_dir).expanduser().resolve()
    target_dir = Path(out_dir).expanduser().resolve() if out_dir is not None else gguf_path.parent
    if not model_dir.is_dir():
        raise GGUFExportError(f"{model_dir} is not a folder: pass the model folder the GGUF was exported from")
    target_dir.mkdir(parents=True, exist_ok=True)

    rel = os.path.relpath(gguf_path, target_dir)
    source = rel if rel.startswith("..") or os.path.isabs(rel) else f"./{rel}"
    bos, eos, stops = _special_tokens(model_dir)
    template = chat_template(model_dir)
    fmt, system = _detect_chat_format(template, bos, eos)

    lines = [f"# Ollama Modelfile for {gguf_path.name}, exported from {model_dir.name}.",
             f"# Create the model with: ollama create <name> -f {MODELFILE_NAME}", f"FROM {source}", ""]
    if fmt:
        lines += [f"# {fmt} chat format, translated from the model's chat template (checked by rendering it).",
                  f'TEMPLATE """{_OLLAMA_TEMPLATES[fmt]}"""', ""]
        stops = _FORMAT_STOPS[fmt] + stops
    elif template:
        lines += ["# The model's chat template could not be translated to Ollama's template syntax here, so no",
                  "# TEMPLATE is set: Ollama uses the chat template embedded in the GGUF (tokenizer.chat_template).",
                  ""]
    else:
        lines += ["# The model has no chat template: Ollama will send prompts as they are.", ""]
    if system:
        if '"""' in system:
            lines += ["# The template's default system prompt contains triple quotes and is left out.", ""]
        else:
            lines += ["# The default system prompt the model's chat template inserts when none is given.",
                      f'SYSTEM """{system}"""', ""]
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {_go_string(stop)}")
    gen_path = model_dir / "generation_config.json"
    gen = read_json(gen_path, "generation config") if gen_path.is_file() else {}
    if gen.get("do_sample", True):
        for key, param in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                           ("repetition_penalty", "repeat_penalty")):
            if isinstance(gen.get(key), int | float) and not isinstance(gen.get(key), bool):
                lines.append(f"PARAMETER {param} {gen[key]}")

    path = target_dir / MODELFILE_NAME
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
