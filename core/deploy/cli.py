"""``python -m core export|deploy|deployments`` (the Deploy tab's actions).

    python -m core export --run ID [--format safetensors|gguf|adapter|hub] [--quant f16|q8_0] [--out DIR]
                          [--repo-id OWNER/NAME [--public] [--push-adapter]] [--json]
    python -m core deploy --run ID|--model REF --target local|tgi|vllm|container [--dry-run] [--port N] [--gpu NAME]
                          [--num-gpus N] [--quantize-4bit] [--keep-adapter] [--smoke] [--json]
    python -m core deployments list [--all] [--json] | show ID [--json] | stop ID | delete ID
                               | smoke ID [--prompt T] [--json]

Exit codes: 0 ok, 1 the job or server did not succeed, 2 bad input (one line on stderr saying why).
"""
from __future__ import annotations

import sys

from core.deploy.config import DeployConfig, ExportConfig
from core.jobconfig import add_flags, flag_values
from core.text import fail, print_json


def cmd_export(args) -> int:
    from core import runs
    from core.deploy.export import submit_export

    if args.merge and args.format == "adapter":
        return fail("--merge and --format adapter contradict each other: the adapter format keeps it separate")
    try:
        job = submit_export(flag_values(args, args.config_fields))
    except runs.JobError as exc:
        return fail(str(exc))

    def progress(r):
        if r.max_steps:
            print(f"export job {r.id} {r.status} {r.step}/{r.max_steps} tensors", file=sys.stderr, flush=True)

    job = runs.wait_for(job.id, on_progress=progress)
    ok = job.status == runs.RunStatus.succeeded
    if args.json:
        print_json({"job_id": job.id, "status": job.status.value, "error": job.error, **(job.final_metrics or {})})
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

    try:
        cfg = DeployConfig.from_dict(flag_values(args, args.config_fields))
        ref = cfg.model_ref()
        if cfg.target == "local":
            if args.dry_run:
                run_id, model_dir, name, needs_merge = D.resolve_target_model(ref)
                out = {"target": "local", "model_dir": model_dir, "served_name": name, "needs_merge": needs_merge,
                       "args": D.server_argv(model_dir, name, cfg.port or "<free port>",
                                             merge_run=run_id if needs_merge else None)}
                print_json(out) if args.json else print(" ".join(out["args"]))
                return 0
            dep = D.start_local(ref, port=cfg.port, timeout_s=cfg.timeout_s)
            out = D.to_dict(dep)
            if dep.status == "running" and args.smoke:
                out["smoke"] = D.smoke_test(dep.id)
        else:
            res = D.deploy_container(ref, cfg.target, gpu=cfg.gpu, port=cfg.port, num_gpus=cfg.num_gpus,
                                     quantize_4bit=cfg.quantize_4bit, keep_adapter=cfg.keep_adapter,
                                     dry_run=args.dry_run, memory_gb=cfg.memory_gb, cpus=cfg.cpus,
                                     health_timeout_s=cfg.timeout_s)
            row = res.get("deployment") or {}
            if row.get("status") == "running" and args.smoke:
                res["smoke"] = D.smoke_test(row["id"])
            if args.json:
                print_json(res)
            else:
                print(res["command"])
                if res.get("engine"):
                    print(f"note: {res['engine']}", file=sys.stderr)
                if row.get("status") == "failed":  # e.g. the image could not be pulled: one line, why and what to do
                    print(f"deployment {row['id']} failed: {(row.get('error') or '').splitlines()[0]}",
                          file=sys.stderr)
                elif row.get("status") == "running":
                    print(f"deployment {row['id']} running: {row['url']} serving '{row['served_name']}'")
                if res.get("smoke"):
                    print(f"smoke reply ({res['smoke']['latency_s']} s): {res['smoke']['reply']}")
            return 1 if row.get("status") == "failed" else 0
    except (D.DeployError, ValueError) as exc:
        return fail(str(exc).splitlines()[0])
    if args.json:
        print_json(out)
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
                print_json([D.to_dict(d) for d in rows])
            else:
                for d in rows:
                    print(f"{d.id:>4}  {d.target:<6} {d.status:<9} {d.url:<32} {d.served_name}")
            return 0
        if args.dep_cmd == "show":
            d = D.get(args.id)
            print_json({**D.to_dict(d), "snippets": D.snippets(d)}) if args.json else print(
                f"{d.id} {d.target} {d.status} {d.url} '{d.served_name}'" + (f"\n{d.error}" if d.error else ""))
            return 0
        if args.dep_cmd == "stop":
            d = D.stop(args.id)
            print_json(D.to_dict(d)) if args.json else print(f"deployment {d.id} {d.status}")
            return 0
        if args.dep_cmd == "delete":
            D.delete(args.id)
            print_json({"deleted": args.id}) if args.json else print(f"deployment {args.id} deleted")
            return 0
        res = D.smoke_test(args.id, prompt=args.prompt)
        print_json(res) if args.json else print(f"{res['latency_s']} s, model '{res['model']}': {res['reply']}")
        return 0
    except D.DeployError as exc:
        return fail(str(exc).splitlines()[0])


def register_cli(sub) -> None:
    p = sub.add_parser("export", help="merge / export a finished run (a job; waits for it)")
    fields = add_flags(p, ExportConfig, exclude=("name",), required=("run_id",))
    p.add_argument("--public", dest="private", action="store_false", default=None,
                   help="hub: a public repository (= --no-private)")
    p.add_argument("--merge", action="store_true", help="merge the adapter (the default for safetensors and gguf)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export, config_fields=fields)

    p = sub.add_parser("deploy", help="serve a run or model: a local server, or a TGI / vLLM container")
    fields = add_flags(p, DeployConfig)
    p.add_argument("--dry-run", action="store_true", help="print the argument list, start nothing")
    p.add_argument("--smoke", action="store_true", help="send one chat request once it is up")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_deploy, config_fields=fields)

    p = sub.add_parser("deployments", help="serving endpoints the studio started")
    ds = p.add_subparsers(dest="dep_cmd", required=True)
    q = ds.add_parser("list")
    q.add_argument("--all", action="store_true", help="also stopped / failed / planned ones")
    q.add_argument("--json", action="store_true")
    for name in ("show", "stop", "delete", "smoke"):
        q = ds.add_parser(name)
        q.add_argument("id", type=int)
        q.add_argument("--json", action="store_true")
        if name == "smoke":
            q.add_argument("--prompt", default="Say hello in one short sentence.")
    p.set_defaults(func=cmd_deployments)
