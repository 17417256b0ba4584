"""``python -m core export|deploy|deployments`` (the Deploy tab's actions).

    python -m core export --run ID [--format safetensors|gguf|adapter|hub] [--quant f16|q8_0] [--out DIR]
                          [--repo-id OWNER/NAME [--public] [--push-adapter]] [--json]
    python -m core deploy --run ID|--model REF --target local|tgi|vllm [--dry-run] [--port N] [--gpu NAME]
                          [--num-gpus N] [--quantize-4bit] [--keep-adapter] [--smoke] [--json]
    python -m core deployments list [--all] [--json] | show ID [--json] | stop ID | smoke ID [--prompt T] [--json]

Exit codes: 0 ok, 1 the job or server did not succeed, 2 bad input (one line on stderr saying why).
"""
from __future__ import annotations

import json
import sys


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_export(args) -> int:
    from core import runs
    from core.deploy.export import submit_export

    if args.merge and args.format == "adapter":
        return _fail("--merge and --format adapter contradict each other: the adapter format keeps it separate")
    data = {"run_id": args.run, "format": args.format, "quant": args.quant, "out_dir": args.out,
            "repo_id": args.repo_id, "private": not args.public, "push_adapter": args.push_adapter}
    try:
        job = submit_export({k: v for k, v in data.items() if v is not None})
    except runs.JobError as exc:
        return _fail(str(exc))

    def progress(r):
        if r.max_steps:
            print(f"export job {r.id} {r.status} {r.step}/{r.max_steps} tensors", file=sys.stderr, flush=True)

    job = runs.wait_for(job.id, on_progress=progress)
    ok = job.status == runs.RunStatus.succeeded
    if args.json:
        _print_json({"job_id": job.id, "status": job.status.value, "error": job.error, **(job.final_metrics or {})})
    elif ok:
        fm = job.final_metrics or {}
        print(f"export job {job.id}: {fm.get('format')} at {fm.get('output')} ({(fm.get('bytes') or 0) / 1e6:.0f} MB)"
              + (f"; {fm.get('note')}" if fm.get("note") else ""))
    else:
        print(f"export job {job.id} {job.status}: {(job.error or '').splitlines()[0] if job.error else ''}",
              file=sys.stderr)
    return 0 if ok else 1


def cmd_deploy(args) -> int:
    from core.deploy import deployments as D

    ref = f"run:{args.run}" if args.run is not None else (args.model or "default")
    try:
        if args.target == "local":
            if args.dry_run:
                run_id, model_dir, name, needs_merge = D.resolve_target_model(ref)
                out = {"target": "local", "model_dir": model_dir, "served_name": name, "needs_merge": needs_merge,
                       "args": D.server_argv(model_dir, name, args.port or "<free port>",
                                             merge_run=run_id if needs_merge else None)}
                _print_json(out) if args.json else print(" ".join(out["args"]))
                return 0
            dep = D.start_local(ref, port=args.port, timeout_s=args.timeout)
            out = D.to_dict(dep)
            if dep.status == "running" and args.smoke:
                out["smoke"] = D.smoke_test(dep.id)
        else:
            res = D.deploy_container(ref, args.target, gpu=args.gpu, port=args.port, num_gpus=args.num_gpus,
                                     quantize_4bit=args.quantize_4bit, keep_adapter=args.keep_adapter,
                                     dry_run=args.dry_run)
            row = res.get("deployment") or {}
            if args.json:
                _print_json(res)
            else:
                print(res["command"])
                if res.get("engine"):
                    print(f"note: {res['engine']}", file=sys.stderr)
                if row.get("status") == "failed":  # e.g. the image could not be pulled: one line, why and what to do
                    print(f"deployment {row['id']} failed: {(row.get('error') or '').splitlines()[0]}",
                          file=sys.stderr)
            return 1 if row.get("status") == "failed" else 0
    except (D.DeployError, ValueError) as exc:
        return _fail(str(exc).splitlines()[0])
    if args.json:
        _print_json(out)
    else:
        print(f"deployment {dep.id} {dep.status}: {dep.url} serving '{dep.served_name}'"
              + (f"\n{dep.error}" if dep.error else ""))
        if out.get("smoke"):
            print(f"smoke reply ({out['smoke']['latency_s']} s): {out['smoke']['reply']}")
    return 0 if dep.status == "running" else 1


def cmd_deployments(args) -> int:
    from core.deploy import deployments as D

    try:
        if args.dep_cmd == "list":
            rows = D.list_deployments(active_only=not args.all)
            if args.json:
                _print_json([D.to_dict(d) for d in rows])
            else:
                for d in rows:
                    print(f"{d.id:>4}  {d.target:<6} {d.status:<9} {d.url:<32} {d.served_name}")
            return 0
        if args.dep_cmd == "show":
            d = D.get(args.id)
            _print_json({**D.to_dict(d), "snippets": D.snippets(d)}) if args.json else print(
                f"{d.id} {d.target} {d.status} {d.url} '{d.served_name}'" + (f"\n{d.error}" if d.error else ""))
            return 0
        if args.dep_cmd == "stop":
            d = D.stop(args.id)
            _print_json(D.to_dict(d)) if args.json else print(f"deployment {d.id} {d.status}")
            return 0
        res = D.smoke_test(args.id, prompt=args.prompt)
        _print_json(res) if args.json else print(f"{res['latency_s']} s, model '{res['model']}': {res['reply']}")
        return 0
    except D.DeployError as exc:
        return _fail(str(exc).splitlines()[0])


def register_cli(sub) -> None:
    p = sub.add_parser("export", help="merge / export a finished run (a job; waits for it)")
    p.add_argument("--run", type=int, required=True)
    p.add_argument("--format", default="safetensors", choices=["safetensors", "gguf", "adapter", "hub"])
    p.add_argument("--merge", action="store_true", help="merge the adapter (the default for safetensors and gguf)")
    p.add_argument("--quant", default="f16", choices=["f16", "q8_0"], help="GGUF tensor type")
    p.add_argument("--out", default=None, help="also copy the result into this new or empty folder")
    p.add_argument("--repo-id", default=None, help="hub: owner/name to push to (token: HF_TOKEN)")
    p.add_argument("--public", action="store_true", help="hub: a public repository (default private)")
    p.add_argument("--push-adapter", action="store_true", help="hub: push the adapter alone, not the merged model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("deploy", help="serve a run or model: a local server, or a TGI / vLLM container")
    p.add_argument("--run", type=int, default=None)
    p.add_argument("--model", default=None, help="or: default | a model folder")
    p.add_argument("--target", default="local", choices=["local", "tgi", "vllm"])
    p.add_argument("--dry-run", action="store_true", help="print the argument list, start nothing")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--gpu", default=None, help="GPU name from the Estimate tab's catalog (TGI/vLLM sizing)")
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--quantize-4bit", action="store_true")
    p.add_argument("--keep-adapter", action="store_true", help="serve base + adapter (multi-LoRA) instead of merged")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for /health (local)")
    p.add_argument("--smoke", action="store_true", help="send one chat request once it is up")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("deployments", help="serving endpoints the studio started")
    ds = p.add_subparsers(dest="dep_cmd", required=True)
    q = ds.add_parser("list")
    q.add_argument("--all", action="store_true", help="also stopped / failed / planned ones")
    q.add_argument("--json", action="store_true")
    for name in ("show", "stop", "smoke"):
        q = ds.add_parser(name)
        q.add_argument("id", type=int)
        q.add_argument("--json", action="store_true")
        if name == "smoke":
            q.add_argument("--prompt", default="Say hello in one short sentence.")
    p.set_defaults(func=cmd_deployments)
