"""Deploy tab: export a finished run (merged safetensors, GGUF + Ollama Modelfile, or the adapter), serve it — a
local OpenAI-compatible server here, the same server in the studio's image through Docker, or TGI / vLLM containers on
a GPU host — smoke-test it and hand it off. On a Space a signed-in visitor pushes to the Hub with their own token.

Exports are jobs (core.runs) and servers are managed processes with a row each (core.deploy.deployments): both run
outside the dashboard, survive a closed tab and are reconciled on the next read. Only binds components to core
calls. Handlers are module-level so tests call them without a browser.
"""
from __future__ import annotations

import html
import time

import gradio as gr
import pandas as pd

from core import runs
from core.deploy import deployments as D
from core.deploy.config import DeployConfig, ExportConfig
from core.jobconfig import choices_of
from core.runs import JobError, RunStatus
from core.space import in_space
from ui.common import if_changed, is_mine, job_progress, mine_box, owner_filter, visitor_hub_token

REFRESH_S = 2.0  # while an export runs or the selected deployment is starting
IDLE_REFRESH_S = 6.0  # otherwise: a selected server that died still shows within this (each event costs a page this
#                       size ~0.1 s of browser time, and each tick asks the server's /health)
EXPORT_COLUMNS = ["job", "run", "format", "status", "output", "by"]
DEPLOY_COLUMNS = ["id", "target", "model", "status", "url", "by"]
CLOUD_TARGETS = {"Hugging Face Inference Endpoints": "hf_endpoints", "Amazon SageMaker": "sagemaker",
                 "Google Vertex AI": "vertex"}


def run_choices() -> list[tuple[str, str]]:
    return [(f"#{r.id} {r.name} ({r.method})", str(r.id)) for r in runs.list_runs(kind="train")
            if r.adapter_path and r.status == RunStatus.succeeded]


def model_choices() -> list[tuple[str, str]]:
    return [(label, f"run:{rid}") for label, rid in run_choices()] + [
        ("SmolLM2-135M-Instruct (embedded base)", "default")]


def gpu_choices() -> list[tuple[str, str]]:
    from core.estimate.gpus import GPUS

    return [(g.name, g.key) for g in GPUS]


def exports_frame(who: str | None = None) -> pd.DataFrame:
    """Export jobs (all, or ``who``'s: see ui.common.owner_filter)."""
    rows = []
    for j in runs.list_runs(kind="export"):
        if not is_mine(j.owner, who):
            continue
        fm = j.final_metrics or {}
        status = j.status.value + (f" {j.step}/{j.max_steps}" if j.status.is_active and j.max_steps else "")
        rows.append([j.id, j.parent_run_id, j.method, status, fm.get("output") or (j.error or "").split("\n")[0],
                     j.owner])
    return pd.DataFrame(rows, columns=EXPORT_COLUMNS)


def _deployments(who: str | None = None) -> list:
    return [d for d in D.list_deployments() if is_mine(d.created_by, who)]


def _url_shown(dep) -> str:
    """A failed row has no endpoint: no URL is shown for it (nothing answers there)."""
    return "" if dep.status == "failed" else (dep.url or "")


def deployments_frame(who: str | None = None) -> pd.DataFrame:
    rows = [[d.id, d.target, d.model_ref, d.status, _url_shown(d), d.created_by] for d in _deployments(who)]
    return pd.DataFrame(rows, columns=DEPLOY_COLUMNS)


def deployment_choices(who: str | None = None) -> list[tuple[str, str]]:
    return [(f"#{d.id} {d.target} {d.served_name} ({d.status})", str(d.id)) for d in _deployments(who)]


def start_export(run_id: str | None, fmt: str, quant: str, repo_id: str = "", private: bool = True,
                 user: str = "", hub_token: tuple[str | None, str] | None = None) -> tuple[str, str | None]:
    """``hub_token``: on a Space, the signed-in visitor's own (OAuth token, scope) for a Hub push, which then runs
    in this request (core.deploy.hub.push_for_visitor) — the token is never handed to a job."""
    from core.deploy.export import submit_export
    from core.users import NotAllowed, check_can_manage

    if not run_id or not str(run_id).isdigit():
        return "**Error:** pick a finished training run to export.", None
    data = {"run_id": int(run_id), "format": fmt, "quant": quant}
    if fmt == "hub":
        data.update(repo_id=(repo_id or "").strip(), private=bool(private))
    try:
        check_can_manage(runs.get_run(int(run_id)), user, "export")
        if fmt == "hub" and in_space():  # a visitor's own token, or nothing: never the Space owner's
            from core.deploy.export import push_for_visitor

            token, scope = hub_token or (None, "")
            pushed = push_for_visitor(int(run_id), data["repo_id"], token=token, scope=scope,
                                      private=bool(private))
            return (f"Pushed run #{int(run_id)} ({html.escape(pushed['what'])}) to "
                    f"<code>{html.escape(pushed['url'])}</code> with your Hugging Face sign-in.", None)
        job = submit_export(data, owner=user)
    except NotAllowed as exc:
        return f"**Not allowed:** {html.escape(str(exc))}", None
    except JobError as exc:
        return f"**Error:** {html.escape(str(exc))}", None
    return f"Export job #{job.id} **{job.status.value}**: it runs in its own process.", str(job.id)


def export_progress(job_id: str | None) -> str:
    return job_progress(job_id, _export_outcome)


def _export_outcome(job) -> str:
    """Where a finished export is (a folder, or the Hub repository it was pushed to)."""
    if job.status != RunStatus.succeeded:
        return ""
    fm = job.final_metrics or {}
    if fm.get("url"):
        return (f"<div>Pushed to <code>{html.escape(str(fm.get('url')))}</code> "
                f"({html.escape(fm.get('what', ''))})</div>")
    return (f"<div>Ready: <code>{html.escape(str(fm.get('output')))}</code> "
            f"({(fm.get('bytes') or 0) / 1e6:.0f} MB, {fm.get('seconds')} s). {html.escape(fm.get('note', ''))}</div>")


def start_deploy(model_ref: str | None, target: str, port, gpu: str | None, num_gpus, quantize_4bit: bool,
                 keep_adapter: bool, request: gr.Request | None = None) -> tuple[str, str, str | None]:
    """(message, command text, selected deployment id). Local servers start in the background (the tab polls)."""
    from core.users import check_can_manage
    from ui.common import user_of

    user = user_of(request)
    who = user or "anonymous"
    try:
        cfg = DeployConfig.from_dict({  # a ConfigError is a ValueError: shown below
            "model": model_ref or "default", "target": target, "gpu": gpu, "num_gpus": int(num_gpus or 1),
            "port": int(port) if port else None,  # an empty number box sends 0: a free port
            "quantize_4bit": bool(quantize_4bit), "keep_adapter": bool(keep_adapter)})
        ref = cfg.model_ref()
        run_ref = ref.strip().lower()
        if run_ref.startswith("run:") and run_ref[4:].strip().isdigit():  # serving a run is its owner's call
            check_can_manage(runs.get_run(int(run_ref[4:])), user, "deploy")
        from core.access import check_user_path

        check_user_path(ref, "the model folder")  # PathNotAllowed is a ValueError: shown below
        if cfg.target == "local":
            dep = D.start_local(ref, port=cfg.port, created_by=who, wait=False)
            return (f"Deployment #{dep.id} **{dep.status}** on `{dep.url}` — loading the model (a run without a "
                    "merged model is merged first); the status turns **running** when `/health` answers.",
                    " ".join(dep.args), str(dep.id))
        res = D.deploy_container(ref, cfg.target, gpu=cfg.gpu, port=cfg.port, num_gpus=cfg.num_gpus,
                                 quantize_4bit=cfg.quantize_4bit, keep_adapter=cfg.keep_adapter, created_by=who,
                                 wait=False)  # a pull can take many minutes: it goes on, its progress shows below
    except (D.DeployError, ValueError) as exc:
        return f"**Error:** {html.escape(str(exc).splitlines()[0])}", "", None
    dep = res["deployment"]
    sizing = res["sizing"]
    fit = (f"Sized for {html.escape(gpu or 'the default GPU')}: max input {sizing.get('max_input_tokens')}, "
           f"max total {sizing.get('max_total_tokens')} tokens. {html.escape(sizing.get('why') or '')}"
           if sizing else "The studio's server on the CPU, in its image.")
    if dep and dep["status"] == "planned":
        msg = (f"Deployment #{dep['id']} **planned**: {html.escape(res['engine'])}\n\n"
               f"Run the command below on a GPU host. {fit}")
    elif dep and dep["status"] == "starting":  # an event, not a status: the row under Deployments goes on
        msg = (f"Deployment #{dep['id']} launched at {time.strftime('%H:%M:%S')}: the image is pulled first if the "
               "Docker engine lacks it, then the container starts — its status, progress or why it failed show "
               f"under **Deployments**.\n\n{fit}")
    elif dep:
        why = (dep.get("error") or "").splitlines()[0] if dep.get("error") else ""
        msg = f"Deployment #{dep['id']} **{dep['status']}**" + (f": {html.escape(why)}" if why else "") + \
            f"\n\n{fit}"
    else:
        msg = fit
    return msg, res["command"], str(dep["id"]) if dep else None


def deployment_details(dep_id: str | None) -> tuple[str, str, str, str]:
    """(status markdown, curl, python, openai snippets)."""
    if not dep_id:
        return "_No deployment selected._", "", "", ""
    try:
        dep = D.get(int(dep_id))
    except (D.DeployError, ValueError):
        return f"_Deployment {html.escape(str(dep_id))} not found._", "", "", ""
    e = html.escape
    url = _url_shown(dep)
    lines = [f"**#{dep.id} {e(dep.target)}** · {e(dep.status)} · " + (f"<code>{e(url)}</code> · " if url else "")
             + f"model name <code>{e(dep.served_name)}</code> · folder <code>{e(dep.model_dir)}</code>"]
    if dep.job_id is not None:  # a local server is a serve job on the runs core
        lines.append(f"serve job #{dep.job_id}" + (f" · process {dep.pid}" if dep.pid else "")
                     + f" · log <code>{e(dep.log_path)}</code>" + _queued_note(dep))
    elif dep.pid:
        lines.append(f"process {dep.pid} · log <code>{e(dep.log_path)}</code>")
    if dep.container_id:
        lines.append(f"container <code>{e(dep.container_id[:12])}</code>")
    elif dep.status == "starting" and dep.target != "local":
        lines.append(f"<b>{e(D.pull_line(dep) or 'asking the Docker engine for the image')}</b>")
    if dep.target != "local" and dep.log_path:  # the launch's lines and the container's output, as text
        log = D.container_log(dep)
        if log.strip():
            lines.append(f"log <code>{e(dep.log_path)}</code><pre>{e(log[-3000:])}</pre>")
    if dep.status == "failed" and dep.error:  # why, in its first line; the rest (a log tail, the command) below
        first, _, rest = dep.error.partition("\n")
        lines.append(f"<b>Failed:</b> {e(first)}" + (f"<pre>{e(rest[-2000:])}</pre>" if rest.strip() else ""))
    elif dep.error:  # log tails hold anything: shown as text
        lines.append(f"<pre>{e(dep.error[-2000:])}</pre>")
    if not url:  # nothing answers: no client snippets pointing at it
        return "\n\n".join(lines), "", "", ""
    sn = D.snippets(dep)
    return "\n\n".join(lines), sn["curl"], sn["python"], sn["openai"]


def _queued_note(dep) -> str:
    """Why a starting local deployment has no process yet: its serve job waits for a server slot."""
    if dep.status != "starting":
        return ""
    try:
        job = runs.get_run(dep.job_id)
    except (JobError, ValueError):
        return ""
    return (" · <b>queued: waiting for a free server slot (FTS_MAX_SERVERS local servers run at once)</b>"
            if job.status == runs.RunStatus.queued else "")


def run_smoke(dep_id: str | None, prompt: str) -> str:
    if not dep_id:
        return "**Error:** select a deployment first."
    try:
        res = D.smoke_test(int(dep_id), prompt=(prompt or "").strip() or "Say hello in one short sentence.")
    except (D.DeployError, ValueError) as exc:
        return f"**Error:** {html.escape(str(exc).splitlines()[0])}"
    return (f"**Reply** ({res['latency_s']} s, {res['completion_tokens']} tokens):\n\n"
            f"<pre>{html.escape(res['reply'])}</pre>\n\n**Streaming** ({res['stream_chunks']} chunks, first after "
            f"{res['stream_first_token_s']} s, all in {res['stream_s']} s):\n\n<pre>{html.escape(res['stream_reply'])}"
            "</pre>")


def stop_deployment(dep_id: str | None, user: str = "") -> str:
    if not dep_id:
        return "**Error:** select a deployment first."
    from core.users import can_manage

    try:
        owner = D.get(int(dep_id)).created_by or ""
        if not can_manage("" if owner == "anonymous" else owner, user):
            return (f"**Not allowed:** deployment #{dep_id} was started by {html.escape(owner)}: only they or an "
                    "admin can stop it")
        dep = D.stop(int(dep_id))
    except (D.DeployError, ValueError) as exc:
        return f"**Error:** {html.escape(str(exc))}"
    if dep.status != "stopped":
        return f"Deployment #{dep.id} is **{dep.status}** (nothing to stop)."
    return f"Deployment #{dep.id} **stopped**" + (f"; port {dep.port} is free." if dep.target == "local" else ".")


def deploy_tick(job_id, dep_id, cache: dict | None, who: str | None = None) -> tuple:
    """The Deploy tab's refresh: the export's progress while it runs, and the selected deployment's status (its
    process and /health checked). Returns (export progress, exports table, export job, deployments table,
    deployment list, its 4 details, the page's cache, the timer): every ``REFRESH_S`` while an export runs or the
    deployment is starting, every ``IDLE_REFRESH_S`` otherwise. ``cache`` is the page's own (what it was sent:
    ``"shown"``, the (deployment id, status) it shows, and the timer's pace through ``if_changed``)."""
    cache = {} if cache is None else cache
    out_job = gr.update()
    prog = gr.update()
    ex_tab = gr.update()
    busy = False
    if job_id:
        prog = export_progress(job_id)
        ex_tab = exports_frame(who)
        try:
            if runs.get_run(int(job_id)).status.is_finished:
                out_job = None
            else:
                busy = True
        except (JobError, ValueError):
            out_job = None
    dep_updates = [gr.update()] * 6
    if dep_id:
        try:
            before = D.peek(int(dep_id)).status
            status = D.get(int(dep_id)).status  # checks the process and /health
        except (D.DeployError, ValueError):
            before = status = None
        busy = busy or status == "starting"
        # still coming up, it just changed (up, died), or it changed since this page showed it (a launch thread
        # wrote its ending: the table and the list follow, not only the details)
        if status == "starting" or status != before or (dep_id, status) != tuple(cache.get("shown") or ()):
            dep_updates = [deployments_frame(who), gr.update(choices=deployment_choices(who), value=dep_id),
                           *deployment_details(dep_id)]
            cache["shown"] = (dep_id, status)
    pace = REFRESH_S if busy else IDLE_REFRESH_S
    return (prog, ex_tab, out_job, *dep_updates, cache, if_changed(cache, "pace", gr.Timer(value=pace), pace))


def cloud_text(model_ref: str | None, target_label: str, gpu: str | None, num_gpus) -> str:
    from core.deploy.clouds import cloud_settings
    from core.deploy.containers import ServeSpec
    from core.estimate.serving import LaunchError

    try:
        run_id, model_dir, name, _ = D.resolve_target_model(model_ref or "default")
        spec = ServeSpec(model_dir=model_dir, served_name=name, gpu=gpu or None, num_gpus=int(num_gpus or 1))
        return cloud_settings(spec, CLOUD_TARGETS.get(target_label, "hf_endpoints"))
    except (D.DeployError, LaunchError, ValueError) as exc:
        return f"# {exc}"


def build_tab():
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("#### Export\nMerge a LoRA/QLoRA run into its base (safetensors, tensor by tensor), write "
                        "GGUF for llama.cpp / Ollama, or keep the adapter for multi-LoRA serving.")
            with gr.Row():
                ex_run = gr.Dropdown(choices=[], label="Finished run", scale=4, elem_id="dep-export-run",
                                  allow_custom_value=True)  # a refresh can remove the shown item
                refresh = gr.Button("↻", scale=0, min_width=40, size="sm")
            ex_fmt = gr.Radio(choices_of(ExportConfig, "format"), value="safetensors", label="Format",
                              info="hub: push the merged model with a model card (token: HF_TOKEN on the server)")
            ex_quant = gr.Radio(choices_of(ExportConfig, "quant"), value="f16", label="GGUF type",
                                info="Q8_0: about half the size")
            with gr.Row():
                ex_repo = gr.Textbox(label="Hub repository (hub)", placeholder="my-org/support-json-lora", scale=3)
                ex_private = gr.Checkbox(True, label="private", scale=1)
            ex_btn = gr.Button("Export", variant="secondary", elem_id="dep-export")
            ex_msg = gr.Markdown()
            ex_job = gr.State(None)
            ex_progress = gr.HTML()
            ex_table = gr.Dataframe(headers=EXPORT_COLUMNS, interactive=False, wrap=True, max_height=220,
                                    label="Exports")
        with gr.Column(scale=3, min_width=420):
            gr.Markdown("#### Serve\n**local**: an OpenAI-compatible server on this machine (`transformers serve`). "
                        "**tgi** / **vllm**: the container command for a GPU host, sized from the Estimate tab — "
                        "started here when a Docker engine answers. **container**: the same server as local, in "
                        "the studio's image (`make image`) through the Docker engine, the merged model mounted "
                        "read-only.")
            with gr.Row():
                model = gr.Dropdown(choices=model_choices(), value="default", label="Model", scale=3,
                                    elem_id="dep-model")
                target = gr.Radio(choices_of(DeployConfig, "target"), value="local", label="Target", scale=2,
                                  elem_id="dep-target")
            with gr.Row():
                port = gr.Number(None, label="Port (0: a free one)", precision=0, minimum=0, maximum=65535)
                gpu = gr.Dropdown(choices=gpu_choices(), value="a10g", label="GPU (tgi / vllm)")
                num_gpus = gr.Number(1, label="GPUs", precision=0, minimum=1)
            with gr.Row():
                quant4 = gr.Checkbox(False, label="4-bit (bitsandbytes NF4)")
                keep_adapter = gr.Checkbox(False, label="Serve base + adapter (multi-LoRA)")
            deploy_btn = gr.Button("Deploy", variant="primary", elem_id="dep-start")
            deploy_msg = gr.Markdown(elem_id="dep-msg")
            command = gr.Code(label="Command", language="shell", interactive=False, elem_id="dep-command")
            with gr.Row():
                gr.Markdown("#### Deployments")
                mine = mine_box("Only mine (exports and deployments)", "dep-mine")
            table = gr.Dataframe(headers=DEPLOY_COLUMNS, interactive=False, wrap=True, max_height=220,
                                 elem_id="dep-table")
            with gr.Row():
                selected = gr.Dropdown(choices=[], label="Deployment", scale=3, elem_id="dep-selected",
                                  allow_custom_value=True)  # a refresh can remove the shown item
                stop_btn = gr.Button("Stop", scale=1, elem_id="dep-stop")
                health_btn = gr.Button("Check health", scale=1)
            details = gr.Markdown(elem_id="dep-details")
            with gr.Row():
                smoke_prompt = gr.Textbox("Say hello in one short sentence.", label="Smoke-test prompt", scale=4)
                smoke_btn = gr.Button("Send", scale=1, elem_id="dep-smoke")
            smoke_out = gr.Markdown(elem_id="dep-smoke-out")
            with gr.Accordion("Use it from code", open=False):
                curl = gr.Code(label="curl", language="shell", interactive=False)
                py = gr.Code(label="Python (huggingface_hub.InferenceClient)", language="python", interactive=False)
                oai = gr.Code(label="Python (openai SDK)", language="python", interactive=False)
            with gr.Accordion("Cloud: Inference Endpoints, SageMaker, Vertex AI (settings to paste)", open=False):
                cloud_target = gr.Radio(list(CLOUD_TARGETS), value="Hugging Face Inference Endpoints",
                                        label="Where")
                cloud_btn = gr.Button("Show settings")
                cloud = gr.Code(label="Settings", interactive=False)

    def refresh_lists(current_sel=None, current_run=None, mine=False, request: gr.Request = None):
        who = owner_filter(mine, request)
        deps = deployment_choices(who)
        ids = [v for _, v in deps]
        sel = current_sel if current_sel in ids else (ids[0] if ids else None)
        rc = run_choices()
        run_value = current_run if current_run in [v for _, v in rc] else (rc[0][1] if rc else None)
        return (gr.update(choices=rc, value=run_value), gr.update(choices=model_choices()), exports_frame(who),
                deployments_frame(who), gr.update(choices=deps, value=sel))

    list_outputs = [ex_run, model, ex_table, table, selected]
    refresh.click(refresh_lists, [selected, ex_run, mine], list_outputs)
    mine.change(refresh_lists, [selected, ex_run, mine], list_outputs)

    def on_export(run_id, fmt, quant, repo_id, private, mine, request: gr.Request):
        from ui.common import user_of

        msg, job = start_export(run_id, fmt, quant, repo_id, private, user=user_of(request),
                                hub_token=visitor_hub_token(request) if fmt == "hub" else None)
        return msg, job, export_progress(job), exports_frame(owner_filter(mine, request))

    ex_event = ex_btn.click(on_export, [ex_run, ex_fmt, ex_quant, ex_repo, ex_private, mine],
                            [ex_msg, ex_job, ex_progress, ex_table])

    detail_outputs = [details, curl, py, oai]

    def on_deploy(model_ref, target_, port_, gpu_, num_gpus_, quant4_, keep_adapter_, mine, request: gr.Request):
        msg, cmd, dep_id = start_deploy(model_ref, target_, port_, gpu_, num_gpus_, quant4_, keep_adapter_,
                                        request=request)
        who = owner_filter(mine, request)
        deps = deployment_choices(who)
        return (msg, cmd, deployments_frame(who), gr.update(choices=deps, value=dep_id) if dep_id else gr.update(),
                *deployment_details(dep_id))

    deploy_event = deploy_btn.click(on_deploy, [model, target, port, gpu, num_gpus, quant4, keep_adapter, mine],
                                    [deploy_msg, command, table, selected, *detail_outputs])
    selected.change(deployment_details, selected, detail_outputs)

    def on_health(dep_id, mine, request: gr.Request):
        return (deployments_frame(owner_filter(mine, request)), *deployment_details(dep_id))

    health_btn.click(on_health, [selected, mine], [table, *detail_outputs])

    def on_stop(dep_id, mine, request: gr.Request):
        from ui.common import user_of

        msg = stop_deployment(dep_id, user_of(request))
        who = owner_filter(mine, request)
        return msg, deployments_frame(who), gr.update(choices=deployment_choices(who), value=dep_id), \
            *deployment_details(dep_id)

    stop_btn.click(on_stop, [selected, mine], [smoke_out, table, selected, *detail_outputs])
    smoke_btn.click(run_smoke, [selected, smoke_prompt], smoke_out)
    cloud_btn.click(cloud_text, [model, cloud_target, gpu, num_gpus], cloud)

    def tick(job_id, dep_id, cache, mine=False, request: gr.Request = None):
        """A tick never fails the page: a busy database or a vanished row leaves the view as it was until the next
        one."""
        try:
            return deploy_tick(job_id, dep_id, cache, owner_filter(mine, request))
        except Exception:  # noqa: BLE001 - the next tick tries again
            return (gr.update(),) * 11

    def quick(cache):
        """An export or a deployment just started: watched at the quick pace at once (a timer's value only: whether
        it ticks stays the tab's business)."""
        cache = {} if cache is None else cache
        return cache, if_changed(cache, "pace", gr.Timer(value=REFRESH_S), REFRESH_S)

    cache_state = gr.State({"sent": {"pace": REFRESH_S}})  # what this page was sent (the timer starts quick)
    timer = gr.Timer(REFRESH_S)
    timer.tick(tick, [ex_job, selected, cache_state, mine],
               [ex_progress, ex_table, ex_job, table, selected, *detail_outputs, cache_state, timer],
               show_progress="hidden", concurrency_limit=None)
    for event in (ex_event, deploy_event):
        event.then(quick, cache_state, [cache_state, timer], show_progress="hidden")
    return refresh_lists, [selected, ex_run, mine], list_outputs
