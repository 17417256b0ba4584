"""bench/gpu_check.py --cpu-tiny: every measure of the GPU check runs its real path on tiny configs and prints one JSON
line with numbers, or a skip that says why (the GPU-only ones here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
MODELS = ("llama3-8b-shape-tiny", "mistral-7b-shape-tiny")


def test_cpu_tiny_prints_every_measure(tmp_path):
    out = tmp_path / "lines.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--cpu-tiny", "--steps", "3",
                           "--warmup", "1", "--seq", "48", "--json-out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(s) for s in proc.stdout.splitlines() if s.startswith("{")]
    assert lines == [json.loads(s) for s in out.read_text().splitlines()]  # --json-out holds the same lines
    by = {}
    for ln in lines:
        assert "error" not in ln, ln
        assert ln["measure"] in ("environment", "summary") or ln["device"].startswith("cpu"), ln
        by.setdefault((ln["measure"], ln["model"]), []).append(ln)

    env, summary = lines[0], lines[-1]
    assert env["measure"] == "environment" and env["mode"] == "cpu-tiny" and env["torch"]
    assert summary["measure"] == "summary" and summary["failed"] == 0
    assert summary["ok"] + summary["skipped"] == len(lines) - 2

    def numbers(ln, tokens_per_step):
        assert ln["step_s"] > 0 and ln["tokens_per_s"] > 0 and ln["steps_timed"] == 2, ln
        # every example is exactly max_length tokens: the synthetic rows are longer and cut there
        assert ln["tokens_per_step"] == tokens_per_step, ln
        assert ln["peak_bytes"] > 0 and ln["estimate_bytes"] > 0, ln
        assert ln["ratio"] == round(ln["peak_bytes"] / ln["estimate_bytes"], 3)

    for model in MODELS:
        assert by[("prepare", model)][0]["disk_bytes"] > 0
        lora = by[("lora", model)][0]
        numbers(lora, 4 * 48)
        assert (lora["attention"], lora["packing"], lora["gradient_checkpointing"]) == ("fts_packed_sdpa", True, False)
        # the estimate and the measured peak of the same training are the same order of magnitude
        assert 0.5 < lora["ratio"] < 2, lora
        qlora = by[("qlora", model)][0]
        if "skipped" in qlora:
            assert "bitsandbytes" in qlora["skipped"]
        else:
            numbers(qlora, 4 * 48)
            assert qlora["method"] == "qlora"

    llama = MODELS[0]
    plain = by[("plain_trl", llama)][0]
    numbers(plain, 4 * 48)
    vs = by[("ours_vs_trl", llama)][0]
    assert vs["ratio"] == round(by[("lora", llama)][0]["tokens_per_s"] / plain["tokens_per_s"], 3)
    attention = {ln["attention"]: ln for ln in by[("attention", llama)]}
    assert set(attention) == {"fts_packed_sdpa", "sdpa", "flash_attention_2"}
    for name in ("fts_packed_sdpa", "sdpa"):
        assert attention[name]["tokens_per_s"] > 0 and attention[name]["step_s"] > 0
    assert attention["fts_packed_sdpa"]["vs_ours"] == 1.0
    assert "skipped" in attention["flash_attention_2"] or attention["flash_attention_2"]["tokens_per_s"] > 0

    ddp = by[("distributed", MODELS[1])][0]
    if "skipped" not in ddp:  # two gloo processes: both ranks' tokens count
        assert ddp["world_size"] == 2
        numbers(ddp, 2 * 4 * 48)
