"""The local server process: ``transformers serve`` pinned to one model folder, as clients expect an endpoint to be.

    python -m core.deploy.local_server --model DIR --name NAME --port N [--host 127.0.0.1] [--merge-run ID]

The studio runs the same server as a ``serve`` job (core.deploy.serve_job, which patches ``transformers serve`` with
:func:`patch_transformers_serve` below); ``main`` is the command that serves a model so by hand (``python -m core
deploy --target local --dry-run`` prints it). ``transformers serve`` alone, serving a local folder,
lists only the Hub cache at ``/v1/models`` (the served folder is missing there; a 500 when the folder is absent) and
answers 400 to any request that does not name the folder's full path. Here the server is pinned to the folder
(``force_model``), ``/v1/models`` lists exactly the served model under NAME, a request naming NAME (or nothing,
or the folder) is served, and every response names NAME as its ``model`` — so OpenAI clients that discover the
model, or send the name they were given, work and see it echoed. Other names get a 404 that says which model is
served.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def patch_transformers_serve(model_dir: str, name: str) -> None:
    from transformers.cli.serving import model_manager, utils

    created = int(time.time())

    def served_models(cache_dir: str | None = None) -> list[dict]:
        return [{"id": name, "object": "model", "created": created, "owned_by": "finetune-studio"}]

    model_manager.ModelManager.get_gen_models = staticmethod(served_models)
    original = utils.BaseHandler._resolve_model

    def resolve(self, body: dict):
        requested = body.get("model")
        if requested in (None, "", name, model_dir):
            body.pop("model", None)
        else:
            from fastapi import HTTPException

            raise HTTPException(status_code=404, detail=f"model '{requested}' is not served here; this server "
                                                        f"serves '{name}' (GET /v1/models)")
        _model_id, model, processor = original(self, body)
        # the id each response names ("model": ...) is the served name /v1/models lists, not the folder
        # ('<workspace>/runs/1/merged@main'): clients match the two
        return name, model, processor

    utils.BaseHandler._resolve_model = resolve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.deploy.local_server")
    ap.add_argument("--model", required=True, help="a merged model folder (safetensors + tokenizer)")
    ap.add_argument("--name", required=True, help="the model name clients send and /v1/models lists")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--merge-run", type=int, default=None, help="merge this training run's adapter into --model first")
    args = ap.parse_args(argv)
    # a stop during the merge: exit through Python so a half-written merged folder is removed on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    model_dir = os.path.abspath(args.model)
    if args.merge_run is not None:
        from core.deploy.export import ensure_merged, trained_run

        try:
            merged, note = ensure_merged(trained_run(args.merge_run), log=lambda m: print(f"[local server] {m}",
                                                                                          flush=True))
        except (ValueError, OSError) as exc:
            print(f"error: cannot merge run {args.merge_run}: {exc}", file=sys.stderr, flush=True)
            return 2
        model_dir = str(merged)
        print(f"[local server] {note}", flush=True)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        print(f"error: {model_dir} is not a model folder (no config.json)", file=sys.stderr, flush=True)
        return 2
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"[local server] loading {model_dir} as '{args.name}' on http://{args.host}:{args.port}/v1", flush=True)
    patch_transformers_serve(model_dir, args.name)
    from transformers.cli.serve import Serve

    Serve(force_model=model_dir, host=args.host, port=args.port, device=args.device, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
