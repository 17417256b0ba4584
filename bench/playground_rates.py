"""Tokens/s per Playground side (issue 31): the base and a tuned run answer the quick start's demo message in one
batch; the tuned side stops early (a short JSON answer), the base goes on. Prints each side's tokens, its rate over its
own decoding time (what the Playground shows now) and the old figure (first token to last, the passes the other side
shared and the ones after it left included).

    FTS_WORKSPACE=<a workspace with a finished run> .venv/bin/python bench/playground_rates.py --run 1 [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    from core.data.demo import DEMO_SYSTEM_PROMPT
    from core.generate import BatchDecoder, GenSettings, ModelCache, prompt_ids, resolve_source
    from core.generate.streaming import _rate
    from core.quickstart import demo_message

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=int, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()
    cache = ModelCache()
    sides = [cache.slot(resolve_source("default")), cache.slot(resolve_source(f"run:{args.run}"))]
    assert sides[0].loaded is sides[1].loaded, "the two sides share one base: one batch, as the Playground decodes"
    msgs = [{"role": "system", "content": DEMO_SYSTEM_PROMPT}, {"role": "user", "content": demo_message()}]
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| try | side | tokens | tokens/s shown now (own decoding time) | old figure (first to last token) |")
    print("|---:|---|---:|---:|---:|")
    for k in range(1, args.repeat + 1):
        dec = BatchDecoder(sides[0].loaded, [prompt_ids(s.tok, msgs) for s in sides],
                           [s.adapter_name for s in sides], GenSettings(max_new_tokens=args.max_new_tokens),
                           tokenizers=[s.tok for s in sides])
        for side, row in zip(("base", "tuned"), dec.run()):  # (stream() makes the same decoder for these sides)
            old = (len(row.tokens) - 1) / (row.end_s - row.first_token_s)
            print(f"| {k} | {side} | {len(row.tokens)} | {_rate(row):.2f} | {old:.2f} |")
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
