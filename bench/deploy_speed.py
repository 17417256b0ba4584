"""Deploy benchmarks, measured in one run:

1. Merge peak memory: the RSS of a process running ``core.deploy.merge.merge_lora`` (sampled every 10 ms, the
   Python + torch baseline included) against the merged model's size on disk. Target: ≤ 1.3×.
2. Local server streaming: tokens/s of a streamed chat completion from the local server (``transformers serve``
   patched by core.deploy.local_server, run as a ``serve`` job by core.deploy.serve_job, started through
   ``deployments.start_local``; asked through huggingface_hub.InferenceClient) against a plain
   ``model.generate`` loop on the same merged model, prompt and settings (greedy, N new tokens). Rate = tokens over
   the time from the request to the last token. Target: ≥ 0.9×.

    .venv/bin/python bench/deploy_speed.py [--new-tokens 64] [--repeats 3]

The adapter is a LoRA r=16 on every linear layer of the embedded SmolLM2 with random (non-zero) weights: the merge
does the same work as for a trained one, and needs no training run first.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_adapter(base_dir: str, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                            init_lora_weights=False))
    peft.save_pretrained(str(out))


def merge_peak_rss(base_dir: str, adapter: Path, out: Path) -> tuple[int, int, float]:
    """(peak RSS bytes of the merge process, merged size bytes, seconds)."""
    import psutil

    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from core.deploy.merge import merge_lora; "
            f"merge_lora({base_dir!r}, {str(adapter)!r}, {str(out)!r})")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code])
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    if proc.returncode:
        raise SystemExit(f"merge failed ({proc.returncode})")
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return peak, size, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fts-bench-deploy-"))
    os.environ["FTS_WORKSPACE"] = str(work / "ws")

    from core.models import ensure_default_model

    base_dir = str(ensure_default_model())
    adapter = work / "adapter"
    make_adapter(base_dir, adapter)

    peak, size, secs = merge_peak_rss(base_dir, adapter, work / "merged")
    print(f"Merge (SmolLM2-135M fp32 + LoRA r16 all-linear), {secs:.1f} s:")
    print(f"  merged model on disk {size / 1e6:8.1f} MB")
    print(f"  merge process peak RSS {peak / 1e6:6.1f} MB   ratio {peak / size:.2f}x  (target <= 1.3x)")

    import torch
    from huggingface_hub import InferenceClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.deploy import deployments as D

    merged = str(work / "merged")
    chat = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a "
                                        "bottle. Give it a beginning, a middle and an end."}]
    n_new = args.new_tokens
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]

    def plain_rate() -> tuple[float, int]:
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                                 do_sample=False)
        n = out.shape[1] - ids.shape[1]
        return n / (time.perf_counter() - t), n

    dep = D.start_local(merged, timeout_s=300)
    if dep.status != "running":
        raise SystemExit(f"the local server did not start: {dep.error}")
    client = InferenceClient(base_url=dep.url, timeout=300)

    def server_rate() -> tuple[float, int]:
        t = time.perf_counter()
        n = 0
        for chunk in client.chat_completion(messages=chat, model=dep.served_name, max_tokens=n_new, stream=True,
                                            temperature=0.0):
            if chunk.choices and chunk.choices[0].delta.content:
                n += 1
        return n / (time.perf_counter() - t), n

    try:
        plain_rate(), server_rate()  # warm-up
        plain, served = [], []
        for _ in range(args.repeats):
            plain.append(plain_rate())
            served.append(server_rate())
    finally:
        D.stop(dep.id)
    p = statistics.median(r for r, _ in plain)
    s = statistics.median(r for r, _ in served)
    print(f"\nLocal server streaming vs plain generate (greedy, {n_new} new tokens, median of {args.repeats}; "
          f"{plain[0][1]} / {served[0][1]} tokens):")
    print(f"  plain model.generate:   {p:6.1f} tokens/s")
    print(f"  local server (stream):  {s:6.1f} tokens/s   ratio {s / p:.2f}x  (target >= 0.9x)")


if __name__ == "__main__":
    main()
