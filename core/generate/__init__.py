"""Load models and generate: shared by Evaluate, the Playground, Deploy's smoke test and the CLI.

* ``sources``   :func:`resolve_source` turns what a person picked — ``default`` / a Hub id / a model folder, a finished
  training run (``run:7`` or ``7``), an adapter folder — into a :class:`ModelSource`: a base model plus, for LoRA/QLoRA,
  an adapter.
* ``cache``     :class:`ModelCache` keeps loaded base models under a memory budget (least recently used first out).
  Adapters of one base load into that base's PEFT model under their own names, so base and tuned share the weights.
* ``prompts``   a conversation through the model's chat template; the tokens that end an answer.
* ``decoding``  :class:`BatchDecoder` generates for many rows at once — each row with its own adapter (PEFT's
  ``adapter_names``; ``"__base__"`` = no adapter), so base and tuned come out of one forward pass per token. Rows that
  finish leave the batch (their KV cache rows are dropped). Greedy or temperature/top-p sampling with a per-request
  seed.
* ``remote``    :class:`EndpointDecoder`: one conversation streamed from an OpenAI-compatible endpoint.
* ``streaming`` :func:`stream` drives decoders for several slots and yields text deltas as tokens arrive (the
  Playground); :func:`generate` returns whole texts (Evaluate, the CLI).

Model code never runs in the dashboard's request threads without a lock per loaded model; loading is refused up front
when the model would not fit the cache's budget (``FTS_MODEL_CACHE_GB``, default 40 % of the machine's memory).

The names other layers use are re-exported here (``from core.generate import stream``).
"""
from __future__ import annotations

from core.generate.cache import BASE_ADAPTER, LoadedBase, ModelCache, Slot, model_cache, share_prompt_format
from core.generate.decoding import (
    MIN_SHARED_PREFIX,
    BatchDecoder,
    GenSettings,
    RowState,
    decode,
    generate_rows,
    shared_prefix_len,
)
from core.generate.errors import GenerateError
from core.generate.prompts import prompt_ids, render_prompt, stop_token_ids
from core.generate.remote import EndpointDecoder
from core.generate.sources import ModelSource, resolve_source, source_for_run
from core.generate.streaming import SideResult, generate, stream

__all__ = [
    "BASE_ADAPTER", "MIN_SHARED_PREFIX", "BatchDecoder", "EndpointDecoder", "GenSettings", "GenerateError",
    "LoadedBase", "ModelCache", "ModelSource", "RowState", "SideResult", "Slot", "decode", "generate", "generate_rows",
    "model_cache", "prompt_ids", "render_prompt", "resolve_source", "share_prompt_format", "shared_prefix_len",
    "source_for_run", "stop_token_ids", "stream",
]
