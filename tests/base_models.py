"""Small random *base* models for tests: no chat template, a byte-level BPE tokenizer trained here whose only
special token is ``<|endoftext|>`` (as GPT-2's), saved to a folder like a Hub download would be."""
from __future__ import annotations

import json
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _texts() -> list[str]:
    src = FIXTURES / "alpaca_en_demo.json"
    if not src.is_file():
        src = SHARED / "alpaca_en_demo.json"
    rows = json.loads(src.read_text(encoding="utf-8"))[:300]
    return [f"{r['instruction']}\n{r.get('input', '')}\n{r['output']}" for r in rows]


def base_tokenizer():
    """A GPT-2 style tokenizer: byte-level BPE, 800 tokens, EOS = BOS = UNK = <|endoftext|>, no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_texts(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")
    tok.model_max_length = 1024
    return tok


def make_base_model(folder: Path, arch: str = "gpt2", *, hidden: int = 64, layers: int = 2) -> Path:
    """Save a random ``gpt2`` (Conv1D layers, tied head) or ``llama`` (untied head) base model with
    :func:`base_tokenizer` into ``folder``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = base_tokenizer()
    vocab = len(tok)
    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=512, n_embd=hidden, n_layer=layers,
                                           n_head=4, bos_token_id=0, eos_token_id=0))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=512, tie_word_embeddings=False,
                                             bos_token_id=0, eos_token_id=0))
    else:
        raise ValueError(arch)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert not (folder / "chat_template.jinja").exists()
    return folder


def make_tiny_chat_model(folder: Path, source: Path, *, hidden: int = 32, layers: int = 2) -> Path:
    """A random Llama the size of a unit test with ``source``'s tokenizer and chat template (the embedded SmolLM2's):
    it trains, checkpoints, resumes and serves through the very same code as the default model, in a fraction of a
    second a step — for tests of the job machinery (queue, stop, faults, reconcile), not of what a model learns."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(source))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=2048, tie_word_embeddings=True,
                                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    for extra in ("chat_template.jinja", "generation_config.json"):
        if (source / extra).is_file():
            shutil.copy(source / extra, folder / extra)
    return folder
