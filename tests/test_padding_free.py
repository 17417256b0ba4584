"""Padding-free batches must train exactly what separate examples would: no attention across boundaries, loss
only on assistant tokens, and the LM head evaluated only where a label exists."""
import pytest
import torch

from core.data.chat import tokenize_conversation
from core.train.tokenize import IGNORE_INDEX, PaddingFreeCollator, labelled_positions_loss, tokenize_rows

ROWS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris."}]},
    {"messages": [{"role": "system", "content": "Answer in one word."},
                  {"role": "user", "content": "Colour of the sky on a clear day?"},
                  {"role": "assistant", "content": "Blue."},
                  {"role": "user", "content": "And grass?"},
                  {"role": "assistant", "content": "Green, usually, unless it is dry."}]},
    {"text": "Plain text rows train on every token."},
]


def test_labels_cover_assistant_turns_only(tokenizer):
    examples, counts = tokenize_rows(tokenizer, ROWS[:2], max_length=512)
    assert counts["rows"] == 2 and counts["truncated"] == 0
    labelled = tokenizer.decode([t for t in examples[1]["labels"] if t != IGNORE_INDEX])
    assert "Blue." in labelled and "Green, usually" in labelled
    assert "Colour of the sky" not in labelled and "Answer in one word" not in labelled
    tc = tokenize_conversation(tokenizer, ROWS[1]["messages"])
    assert tc.num_loss_tokens == sum(1 for t in examples[1]["labels"] if t != IGNORE_INDEX)


def _loss(model, batch):
    labels = batch.pop("labels")
    with torch.no_grad():
        # use_cache=False as in the worker: with a KV cache transformers skips packed-sequence detection
        logits = model(**batch, use_cache=False).logits
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum"), \
        int((shift_labels != IGNORE_INDEX).sum())


@pytest.mark.parametrize("attn", ["sdpa", "fts_packed_sdpa"])
def test_packed_loss_equals_separate_losses(tokenizer, default_model_dir, attn):
    from transformers import AutoModelForCausalLM

    from core.train.attention import register

    register()
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32, attn_implementation=attn)
    model.eval()
    examples, _ = tokenize_rows(tokenizer, ROWS, max_length=512)
    collate = PaddingFreeCollator(pad_token_id=tokenizer.pad_token_id)
    packed = collate(examples)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert packed["cu_seq_lens_q"].tolist()[-1] == packed["input_ids"].shape[1]
    assert packed["input_ids"].shape[1] == sum(len(e["input_ids"]) for e in examples)  # no padding at all
    packed_sum, packed_n = _loss(model, dict(packed))
    sep_sum, sep_n = 0.0, 0
    for e in examples:
        s, n = _loss(model, dict(collate([e])))
        sep_sum, sep_n = sep_sum + s, sep_n + n
    assert packed_n == sep_n
    # identical up to float reordering: any cross-example attention would move the loss by far more
    assert abs(float(packed_sum) - float(sep_sum)) / float(sep_sum) < 1e-4
    padded = PaddingFreeCollator(pad_token_id=tokenizer.pad_token_id, padding_free=False)(examples)
    assert padded["input_ids"].shape == (3, max(len(e["input_ids"]) for e in examples))

    # the worker's loss (LM head only at labelled positions) equals the full-logits loss
    with torch.no_grad():
        fast, _ = labelled_positions_loss(model, dict(packed))
    assert abs(float(fast) - float(packed_sum) / packed_n) < 1e-4
