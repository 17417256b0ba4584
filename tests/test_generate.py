"""The shared generation core on the real embedded model: the fast LoRA engine equals PEFT, the shared-prefix prefill
equals a plain one, tokens stream incrementally with base and tuned in one batch, and bad input says why."""
from __future__ import annotations

import threading

import pytest
import torch

from core.generate import (
    BASE_ADAPTER,
    BatchDecoder,
    GenerateError,
    GenSettings,
    ModelCache,
    ModelSource,
    prompt_ids,
    resolve_source,
    shared_prefix_len,
    stream,
)
from core.inference import FastLoraModel, UnsupportedAdapter


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, default_model_dir):
    """A real LoRA adapter (r=4 on all linears) whose B matrices are perturbed, so it differs from the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]


def test_fast_lora_engine_equals_peft_per_row(default_model_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 5000, (2, 24), generator=torch.Generator().manual_seed(1))
    fast = FastLoraModel(AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)).eval()
    fast.load_adapter(adapter_dir, "tuned")
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32),
                                     adapter_dir, adapter_name="tuned").eval()
    with torch.no_grad():
        mixed = fast(input_ids=ids, adapter_names=[BASE_ADAPTER, "tuned"]).logits
        ref_tuned = peft(input_ids=ids).logits
        with peft.disable_adapter():
            ref_base = peft(input_ids=ids).logits
        # decode steps (few rows: the mm path) agree too
        step = fast(input_ids=ids[:, :1], adapter_names=["tuned", BASE_ADAPTER]).logits
    assert torch.allclose(mixed[0], ref_base[0], atol=1e-4)
    assert torch.allclose(mixed[1], ref_tuned[1], atol=1e-4)
    assert not torch.allclose(ref_base[1], ref_tuned[1], atol=1e-2)  # the adapter really changes the model
    assert torch.allclose(step[0, 0], ref_tuned[0, 0], atol=1e-4) and torch.allclose(step[1, 0], ref_base[1, 0],
                                                                                     atol=1e-4)


def test_adapters_the_fast_engine_cannot_apply_are_refused(default_model_dir, adapter_dir, tmp_path):
    import json
    import shutil

    from transformers import AutoModelForCausalLM

    dora = tmp_path / "dora"
    shutil.copytree(adapter_dir, dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    fast = FastLoraModel(AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32))
    with pytest.raises(UnsupportedAdapter, match="DoRA"):
        fast.load_adapter(dora, "x")


def test_shared_prefix_prefill_equals_a_plain_one(cache, adapter_dir):
    slot_b = cache.slot(ModelSource("base", "default"))
    slot_t = cache.slot(ModelSource("tuned", "default", str(adapter_dir)))
    tok = slot_b.loaded.tokenizer
    system = {"role": "system", "content": "You answer in one short sentence, politely, and never use lists."}
    prompts = [prompt_ids(tok, [system, {"role": "user", "content": q}])
               for q in ("What is rain?", "Why is the sky blue on a clear day?")]
    assert shared_prefix_len(prompts) >= 16
    rows = prompts * 2
    adapters = [BASE_ADAPTER, BASE_ADAPTER, slot_t.adapter_name, slot_t.adapter_name]
    settings = GenSettings(max_new_tokens=8)
    shared = BatchDecoder(slot_b.loaded, rows, adapters, settings)
    shared._prefill()
    plain = BatchDecoder(slot_b.loaded, rows, adapters, settings)
    plain._prefill_plain()
    assert torch.allclose(shared._logits, plain._logits, atol=1e-3)
    assert [r.tokens for r in shared.run()] == [r.tokens for r in plain.run()]


def test_reference_losses_over_a_shared_prefix_equal_row_by_row_ones(cache, adapter_dir):
    """Evaluate's reference loss: rows that start alike (a system prompt) compute that prefix once per adapter and go
    on from its KV cache. Each row's summed NLL and token count equal its own full forward pass (batch of 1), the
    base and the adapter mixed in one batch, rows of different lengths (right padding), and a second assistant turn
    whose labels come before a later row's prefix would end."""
    from core.data.chat import tokenize_conversation
    from core.evaluate.job import reference_losses

    slot_b = cache.slot(ModelSource("base", "default"))
    slot_t = cache.slot(ModelSource("tuned", "default", str(adapter_dir)))
    tok = slot_b.loaded.tokenizer
    system = {"role": "system", "content": "You answer in one short sentence, politely, and never use lists."}
    chats = [[system, {"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in (
        ("What is rain?", "Water falling from clouds."),
        ("Why is the sky blue on a clear day?", "Air scatters blue light more than red light, so the sky looks blue."),
        ("Hi", "Hello!"))]
    chats.append(chats[0] + [{"role": "user", "content": "And snow?"}, {"role": "assistant", "content": "Frozen."}])
    examples = [(tc.input_ids, tc.assistant_mask) for tc in (tokenize_conversation(tok, c) for c in chats)] * 2
    adapters = [None] * len(chats) + [slot_t.adapter_name] * len(chats)
    assert shared_prefix_len([e[0] for e in examples]) >= 16
    shared = reference_losses(slot_b.loaded, examples, adapters, batch_size=16)
    alone = reference_losses(slot_b.loaded, examples, adapters, batch_size=1)
    assert [n for _, n in shared] == [n for _, n in alone] and all(n > 0 for _, n in alone)
    for (a, _), (b, _) in zip(shared, alone):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-3)
    assert abs(shared[0][0] - shared[len(chats)][0]) > 0.05  # the adapter's rows really differ from the base's


def test_tokens_stream_and_both_sides_share_one_batch(cache, adapter_dir):
    slot_b = cache.slot(ModelSource("base", "default"))
    slot_t = cache.slot(ModelSource("tuned", "default", str(adapter_dir)))
    assert slot_b.loaded is slot_t.loaded  # one copy of the base weights
    updates = list(stream([slot_b, slot_t], [MESSAGES, MESSAGES], GenSettings(max_new_tokens=12)))
    assert len(updates) >= 6  # token by token, not all at the end
    texts = [u[0].text for u in updates]
    assert any(0 < len(a) < len(b) for a, b in zip(texts, texts[1:]))  # it grew as it went
    final = updates[-1]
    assert all(r.text and r.error is None and r.time_to_first_token_s is not None for r in final)
    # each side is what its own model says alone (greedy): plain generate on the base, PEFT on base + adapter
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = slot_b.loaded.tokenizer
    ids = torch.tensor([prompt_ids(tok, MESSAGES)])
    base_dir = slot_b.loaded.path
    ref_base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    ref_tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                          str(adapter_dir)).eval()
    for side, model in ((final[0], ref_base), (final[1], ref_tuned)):
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                 do_sample=False)
        assert side.text == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True), side.label


def test_one_forward_pass_per_token_for_both_sides(cache, adapter_dir):
    slot_b = cache.slot(ModelSource("base", "default"))
    slot_t = cache.slot(ModelSource("tuned", "default", str(adapter_dir)))
    tok = slot_b.loaded.tokenizer
    p = prompt_ids(tok, MESSAGES)
    dec = BatchDecoder(slot_b.loaded, [p, p], [BASE_ADAPTER, slot_t.adapter_name], GenSettings(max_new_tokens=10))
    rows = dec.run()
    longest = max(len(r.tokens) for r in rows)
    assert dec.forward_passes <= longest + 1  # prefill + one pass per token, shared by both rows


def test_a_side_that_stops_early_is_timed_over_its_own_decoding(cache, adapter_dir):
    """Issue 31: a side that finished early showed its tokens over time it did not decode ('0.8 tokens/s · 28
    tokens' next to '2.0 · 96'). Each forward pass's time goes to the rows in it, split between them; a row that
    left the batch is charged nothing more, so its rate is its own."""
    from core.generate.streaming import _rate

    slot_b = cache.slot(ModelSource("base", "default"))
    slot_t = cache.slot(ModelSource("tuned", "default", str(adapter_dir)))
    p = prompt_ids(slot_b.loaded.tokenizer, MESSAGES)
    dec = BatchDecoder(slot_b.loaded, [p, p], [BASE_ADAPTER, slot_t.adapter_name], GenSettings(max_new_tokens=12))
    passes = []  # (seconds, rows in the pass) of every decoding pass
    forward = dec._forward

    def timed(**kw):
        import time

        decoding = dec._logits is not None  # (the prefill's passes come before the first logits)
        t0 = time.perf_counter()
        out = forward(**kw)
        if decoding:
            passes.append((time.perf_counter() - t0, kw["input_ids"].shape[0]))
        return out

    dec._forward = timed
    for _ in range(4):
        dec.step()
    dec.row_stop_ids[0] = set(range(200_000))  # side A stops at its next token; B goes on alone
    rows = dec.run()
    a, b = rows
    assert len(a.tokens) == 4 and len(b.tokens) == 12 and a.end_s < b.end_s
    shared = [t for t, n in passes if n == 2]
    assert a.decode_steps == len(shared) == 4 and b.decode_steps == len(passes) == 11
    assert a.decode_s == pytest.approx(sum(shared) / 2, rel=0.05)  # its half of the passes it was in
    assert a.decode_s + b.decode_s == pytest.approx(sum(t for t, _ in passes), rel=0.05)  # every second counted once
    assert _rate(a) == pytest.approx(4 / a.decode_s) and _rate(b) == pytest.approx(11 / b.decode_s)
    # the old figure charged A from its first token to its last, the passes B shared included; never below it now
    assert _rate(a) >= (len(a.tokens) - 1) / (a.end_s - a.first_token_s)


def test_sampling_is_seeded(cache):
    slot = cache.slot(ModelSource("base", "default"))
    p = prompt_ids(slot.loaded.tokenizer, [{"role": "user", "content": "Tell me a word."}])

    def sample(seed):
        return BatchDecoder(slot.loaded, [p], [None], GenSettings(12, temperature=1.2, top_p=0.9, seed=seed)).run()

    assert sample(3)[0].tokens == sample(3)[0].tokens


def test_two_requests_at_once_both_get_answers(cache, adapter_dir):
    """Two Playground users at once on the same loaded model: the per-model lock interleaves their steps."""
    slot_b = cache.slot(ModelSource("base", "default"))
    slot_t = cache.slot(ModelSource("tuned", "default", str(adapter_dir)))
    out: dict[int, list] = {}

    def user(i):
        *_, last = stream([slot_b, slot_t], [MESSAGES, MESSAGES], GenSettings(max_new_tokens=10))
        out[i] = last

    threads = [threading.Thread(target=user, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(out) == [0, 1] and all(r.text for i in out for r in out[i])
    assert [r.text for r in out[0]] == [r.text for r in out[1]]  # greedy: the same answers, no cross-talk


def test_bad_input_says_why(cache, workspace):
    with pytest.raises(GenerateError, match="not found"):
        resolve_source("/no/such/model/dir")
    with pytest.raises(GenerateError, match="run 42 not found"):
        resolve_source("run:42")
    slot = cache.slot(ModelSource("base", "default"))
    long_prompt = [{"role": "user", "content": "word " * 9000}]
    *_, last = stream([slot], [long_prompt], GenSettings(max_new_tokens=16))
    assert "exceeds the model's context of 8192 tokens" in last[0].error
    with pytest.raises(GenerateError, match="max new tokens must be at least 1"):
        GenSettings(max_new_tokens=0).validated()


def test_a_run_without_an_adapter_is_refused_with_its_reason(workspace):
    from core.runs import store
    from storage import RunStatus

    job = store.submit("train", {"dataset": "x"}, name="broken")
    store.claim_next(1)
    store.mark_started(job.id, pid=None, host="h", backend="local")
    store.finish(job.id, RunStatus.failed, error="out of memory: …", attempt=1)
    with pytest.raises(GenerateError, match=r"run \d+ has no trained adapter .*failed: out of memory"):
        resolve_source(f"run:{job.id}")
