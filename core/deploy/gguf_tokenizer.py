"""The tokenizer inside a GGUF: byte-level BPE tokens, token types, merges, the pre-tokenizer name llama.cpp knows it
by, BOS/EOS behaviour as the tokenizer really encodes, and the chat template."""
from __future__ import annotations

from pathlib import Path

from core.deploy.gguf_folder import GGUFExportError, chat_template, read_json

# The Llama 3 pre-tokenizer split, as it appears in Llama 3's tokenizer.json (llama.cpp calls it "llama-bpe").
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _bpe_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` name for this tokenizer.json's normalizer + pre-tokenizer.

    llama.cpp's converter identifies the pre-tokenizer by hashing the token ids of a test string and looking the hash
    up in a table of known models; that misses any tokenizer whose vocabulary differs from the table's model (a
    fine-tune that added tokens, or a tokenizer rebuilt from a GGUF as this project's default model is). The
    pre-tokenizer itself is what matters, so it is recognised from its structure instead. Anything else is refused
    rather than written with a guess: a wrong pre-tokenizer makes llama.cpp split text differently from training.
    """
    if tokenizer_json.get("normalizer"):
        raise GGUFExportError("the tokenizer has a normalizer, which llama.cpp's byte-level BPE does not apply; "
                              "this tokenizer cannot be exported faithfully")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    last = steps[-1] if steps else {}
    if kinds[-1:] == ["ByteLevel"] and not last.get("add_prefix_space", False):
        if kinds == ["ByteLevel"] and last.get("use_regex", True):
            return "gpt-2"  # the GPT-2 split regex, nothing else
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and last.get("use_regex", True):
            return "smollm"  # each digit alone, then the GPT-2 regex (llama.cpp's SMOLLM pre-tokenizer)
        if (kinds == ["Split", "ByteLevel"] and (steps[0].get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT
                and not last.get("use_regex", True)):
            return "llama-bpe"
    raise GGUFExportError(f"the tokenizer's pre-tokenizer ({' → '.join(map(str, kinds)) or 'none'}) is not one this "
                          "exporter can name for llama.cpp (recognised: GPT-2, SmolLM and Llama 3 style byte-level "
                          "BPE); use llama.cpp's convert_hf_to_gguf.py for this model")


def _looks_special(token: str) -> bool:
    # llama.cpp marks added tokens spelled like control tokens as CONTROL even when the tokenizer does not
    return token.startswith("<|") and token.endswith("|>")


def _read_tokenizer(model_dir: Path, n_vocab: int) -> dict:
    """Tokens, token types, pre-tokenizer name and add-BOS/EOS behaviour of the folder's tokenizer.json."""
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise GGUFExportError(f"{model_dir} has no tokenizer.json; save the tokenizer with the model "
                              "(tokenizer.save_pretrained(folder)) — a GGUF carries its own tokenizer")
    tj = read_json(path, "tokenizer")
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        kind = "SentencePiece-style BPE" if model.get("byte_fallback") else f"{model.get('type')}"
        raise GGUFExportError(f"the tokenizer is {kind}; GGUF export supports byte-level (GPT-2 style) BPE "
                              "tokenizers such as SmolLM's and Llama 3's. SentencePiece tokenizers (Llama 2, "
                              "TinyLlama, Mistral) are not supported yet.")
    pre = _bpe_pre_tokenizer(tj)

    by_id: dict[int, str] = {i: t for t, i in (model.get("vocab") or {}).items()}
    added = {int(a["id"]): a for a in tj.get("added_tokens") or []}
    for i, a in added.items():
        by_id[i] = a["content"]
    if by_id and max(by_id) >= n_vocab:
        raise GGUFExportError(f"the tokenizer has token id {max(by_id)} but config.json's vocab_size is {n_vocab}; "
                              "resize the model's embeddings to the tokenizer before exporting")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # embedding rows past the tokenizer, as llama.cpp pads them
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].get("special") or _looks_special(by_id[i])
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)

    # whether encoding adds BOS/EOS, from the tokenizer itself rather than from parsing its post-processor
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    plain = tok.encode("Hello world", add_special_tokens=False).ids
    full = tok.encode("Hello world", add_special_tokens=True).ids
    return {"tokens": tokens, "types": types, "pre": pre,
            "adds_bos": len(full) > len(plain) and full[0] != plain[0],
            "adds_eos": len(full) > len(plain) and full[-1] != plain[-1]}


def add_tokenizer(writer, model_dir: Path, n_vocab: int) -> None:
    import gguf

    tok = _read_tokenizer(model_dir, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise GGUFExportError("tokenizer.json has no BPE merges; the tokenizer cannot be rebuilt from the GGUF")
    # written below from how the tokenizer actually encodes, so not from SpecialVocab's post-processor parse
    special.add_special_token.pop("bos", None)
    special.add_special_token.pop("eos", None)
    template = special.chat_template if isinstance(special.chat_template, str) else chat_template(model_dir)
    special.chat_template = None
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_bos_token(tok["adds_bos"])
    writer.add_add_eos_token(tok["adds_eos"])
    if template:
        writer.add_chat_template(template)
