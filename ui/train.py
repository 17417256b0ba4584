"""Train tab: pick model, data, method and hyperparameters; start/stop/resume; watch runs live.

Everything shown is read from the DB on a timer, so closing the browser changes nothing and reloading the page
re-attaches to whatever is running.
"""
from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from core import runs
from core.data.templates import OWN, TEMPLATES, template_menu
from core.deletion import delete_run
from core.runs import JobError, RunStatus
from core.train import jobs as train_jobs
from core.train.config import ConfigError, TrainConfig
from core.train.recipes import get_recipe, recipe_menu, recipe_needs
from core.train.rewards import REWARDS
from ui.common import fmt_duration, fmt_num, is_mine, md_text, mine_box, owner_filter, progress_html, user_of

REFRESH_S = 1.0
LOG_LINES = 14  # the box shows exactly the newest lines, no scrolling needed
# "job": training runs, evaluations and exports share one numbering, so a list of runs can skip numbers
RUN_COLUMNS = ["job", "name", "owner", "status", "method", "steps", "loss", "tok/s", "time", "evaluation"]
# every column wide enough for its header on one line, the table as wide as its column (nothing cut at the right)
# (percent of the table; sized at ~7.3 px a character in the runs column of a 1280-1500 px window)
RUN_WIDTHS = {"job": 6, "name": 12, "owner": 11.5, "status": 13.5, "method": 8.5, "steps": 8.5, "loss": 8.5,
              "tok/s": 7.5, "time": 7.5, "evaluation": 16.5}
WITHOUT_OWNER = {"name": 4.5, "evaluation": 7}  # where the owner column's width goes when it is not shown


def run_columns() -> list[str]:
    """The runs table's columns: 'owner' only where several people share the studio (locally it is always empty)."""
    from ui.common import several_users

    return RUN_COLUMNS if several_users() else [c for c in RUN_COLUMNS if c != "owner"]


def run_column_widths() -> list[str]:
    cols = run_columns()
    widths = {c: RUN_WIDTHS[c] + (WITHOUT_OWNER.get(c, 0) if "owner" not in cols else 0) for c in cols}
    total = sum(widths.values())
    return [f"{100 * widths[c] / total:.1f}%" for c in cols]
DEFAULTS = TrainConfig(dataset="-")
LOSS_DTYPES = {"step": "int64", "value": "float64", "series": "str"}
LR_DTYPES = {"step": "int64", "lr": "float64"}
# preference tuning's curves (stored in each metric row's extra): the reward margin and accuracy people watch
PREFERENCE_SERIES = {"rewards/margins": "reward margin", "rewards/accuracies": "accuracy",
                     "rewards/chosen": "chosen reward", "rewards/rejected": "rejected reward"}
# GRPO's: the mean reward of the sampled answers, its spread, each reward's mean, the KL to the start (beta > 0)
GRPO_SERIES = {"reward": "mean reward", "reward_std": "reward spread", "kl": "KL to start"}
OBJECTIVES = [("SFT — supervised, on conversations", "sft"),
              ("DPO — preference pairs, against the model at step 0", "dpo"),
              ("ORPO — preference pairs, SFT + odds ratio, no reference", "orpo"),
              ("GRPO — sampled answers scored by reward programs", "grpo")]


def dataset_choices() -> list[tuple[str, str]]:
    try:
        from core.data import list_datasets

        rows = list_datasets()
    except Exception:  # noqa: BLE001 - an empty list beats a broken tab
        return []
    out = []
    for d in rows:
        kind = getattr(d, "kind", "sft")
        if kind == "multiple_choice":  # questions for Evaluate, nothing to train on
            continue
        what = "preference pairs, for DPO / ORPO" if kind == "preference" else d.format
        out.append((f"#{d.id} {d.name} ({d.rows} rows, {what})", str(d.id)))
    return out


LIVE = {RunStatus.running, RunStatus.stopping, RunStatus.starting, RunStatus.queued}


def train_runs() -> list:
    return runs.list_runs(kind="train")


def runs_frame(rows: list | None = None) -> pd.DataFrame:
    from core.evaluate.results import latest_for_runs

    rows = train_runs() if rows is None else rows
    evals = latest_for_runs([r.id for r in rows])
    out = []
    for r in rows:
        prog = f"{r.step}/{r.max_steps}" if r.max_steps else "-"
        ev = evals.get(r.id)
        headline = (f"{ev.headline} {fmt_num(ev.headline_tuned, '{:.3f}')} (base {fmt_num(ev.headline_base, '{:.3f}')})"
                    if ev and ev.headline else "")
        name = r.name + ("  " + " ".join(f"#{t}" for t in r.tags) if r.tags else "")
        owner = r.owner or ""
        owner = owner[:8] + "…" if owner.startswith("v-") and len(owner) > 9 else owner  # a visitor's long id
        out.append([r.id, name, owner, r.status.value, r.method, prog, fmt_num(r.last_loss),
                    fmt_num(r.tokens_per_s, "{:.0f}"), fmt_duration(runs.duration_s(r)), headline])
    cols = run_columns()
    return pd.DataFrame(out, columns=RUN_COLUMNS)[cols]


def run_choices(rows: list | None = None) -> list[tuple[str, str]]:
    return [(f"#{r.id} {r.name} — {r.status.value}", str(r.id)) for r in (train_runs() if rows is None else rows)]


def default_selected_run(rows: list | None = None) -> str | None:
    rows = train_runs() if rows is None else rows
    for r in rows:
        if r.status in LIVE:
            return str(r.id)
    return str(rows[0].id) if rows else None


def new_metrics_cache(run_id: int | None = None, attempt: int = -1) -> dict:
    return {"run_id": run_id, "attempt": attempt, "last_id": 0, "loss": [], "lr": [], "pref": [], "rows_read": 0,
            "samples": None}


def update_metrics_cache(cache: dict | None, run) -> dict:
    """Fetch only the metric rows this page has not seen (ids above the last one read). A new attempt of the run
    (a resume replaces the rows after its checkpoint) or another run starts the cache afresh."""
    if not cache or cache.get("run_id") != run.id or cache.get("attempt") != run.attempt:
        cache = new_metrics_cache(run.id, run.attempt)
    else:
        cache = {**cache, "loss": list(cache["loss"]), "lr": list(cache["lr"]),
                 "pref": list(cache.get("pref", [])), "samples": cache.get("samples")}
    rows = runs.run_metrics(run.id, since_id=cache["last_id"])
    for m in rows:
        if m.loss is not None:
            cache["loss"].append({"step": m.step, "value": m.loss, "series": "train loss"})
        if m.eval_loss is not None:
            cache["loss"].append({"step": m.step, "value": m.eval_loss, "series": "eval loss"})
        if m.lr is not None:
            cache["lr"].append({"step": m.step, "lr": m.lr})
        extra = m.extra or {}
        for key, series in PREFERENCE_SERIES.items():
            if extra.get(key) is not None:
                cache["pref"].append({"step": m.step, "value": extra[key], "series": series})
        if "reward" in extra:  # a GRPO step
            for key, series in GRPO_SERIES.items():
                if extra.get(key) is not None:
                    cache["pref"].append({"step": m.step, "value": extra[key], "series": series})
            per_reward = [k for k in extra if k.startswith("rewards/") and k.endswith("/mean")]
            if len(per_reward) > 1:  # one reward is the mean reward itself
                for key in per_reward:
                    cache["pref"].append({"step": m.step, "value": extra[key], "series": key.split("/")[1]})
            errors = (cache["samples"] or {}).get("errors", 0) + int(extra.get("reward_errors") or 0)
            cache["samples"] = {"step": m.step, "samples": extra.get("samples") or [], "errors": errors,
                                "length": extra.get("completions/mean_length"), "generate_s": extra.get(
                                    "time/generate_s"), "step_s": extra.get("time/step_s")}
        cache["last_id"] = max(cache["last_id"], m.id)
    cache["rows_read"] = len(rows)
    return cache


def metrics_frames(cache: dict) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(loss frame, second plot's frame): the learning rate, or for preference tuning its rewards and accuracy."""
    # explicit dtypes: an empty or object-typed frame makes the plot treat values as categories
    # no empty frames: a colour-encoded plot that first receives an empty frame never draws its lines later
    loss_rows, lr_rows, pref_rows = cache["loss"], cache["lr"], cache.get("pref") or []
    loss = (pd.DataFrame(loss_rows, columns=["step", "value", "series"]).sort_values("step", kind="stable")
            .astype(LOSS_DTYPES) if loss_rows else None)
    if pref_rows:
        return loss, (pd.DataFrame(pref_rows, columns=["step", "value", "series"])
                      .sort_values("step", kind="stable").astype(LOSS_DTYPES))
    lr = pd.DataFrame(lr_rows, columns=["step", "lr"]).sort_values("step").astype(LR_DTYPES) if lr_rows else None
    if lr is not None:  # one plot serves both: the learning rate is a series of its own
        lr = pd.DataFrame({"step": lr["step"], "value": lr["lr"], "series": "learning rate"}).astype(LOSS_DTYPES)
    return loss, lr


def run_details(run_id: str | None, cache: dict | None = None):
    """(progress html, loss df or None, lr df or None, log tail, config yaml, outcome markdown, metrics cache)."""
    empty = (None, None)
    if not run_id:
        return ("<i>No run selected. Start one on the left.</i>", *empty, "", "", "", new_metrics_cache())
    try:
        run = runs.get_run(int(run_id))
    except (JobError, ValueError):
        return (f"<i>Run {html.escape(str(run_id))} not found.</i>", *empty, "", "", "", new_metrics_cache())
    cache = update_metrics_cache(cache, run)
    loss, lr = metrics_frames(cache)
    config_yaml = TrainConfig.model_validate(run.config).to_yaml()
    err = ""
    if run.error and run.status == RunStatus.queued:  # e.g. a Ray cluster that does not answer yet
        err = f"**Why it has not started:**\n\n<pre class=\"fts-error\">{html.escape(run.error[-3000:])}</pre>"
    elif run.error:
        err = f"**Why it ended:**\n\n<pre class=\"fts-error\">{html.escape(run.error[-3000:])}</pre>"
    elif run.status == RunStatus.succeeded:
        err = f"Adapter saved to `{run.adapter_path}`" + _what_changed(run.id, cache)
    if cache.get("samples"):
        err = (err + "\n\n" if err else "") + samples_markdown(cache["samples"])
    head = progress_html(run.step, run.max_steps, run.status.value, run.eta_s, run.tokens_per_s)
    log_text = runs.log_tail(run.id, max_lines=LOG_LINES)
    # what this page already shows is not sent again: a finished run's refresh sends nothing but the table check
    sig = (run.id, run.attempt)
    return (_if_changed(cache, "head", head), _if_changed(cache, "loss", loss, (*sig, len(cache["loss"]))),
            _if_changed(cache, "lr", lr, (*sig, len(cache["lr"]), len(cache["pref"]))),
            _if_changed(cache, "log", log_text), _if_changed(cache, "config", config_yaml),
            _if_changed(cache, "outcome", err), cache)


def samples_markdown(latest: dict) -> str:
    """A GRPO run's latest step: answer length, time split, reward errors, and the best and worst sampled answers
    with their rewards (model output: shown as text)."""
    e = html.escape
    facts = [f"step {latest['step']}"]
    if latest.get("length") is not None:
        facts.append(f"mean answer {latest['length']:.0f} tokens")
    if latest.get("step_s"):
        facts.append(f"step {latest['step_s']:.1f} s, of which sampling + scoring {latest['generate_s']:.1f} s")
    facts.append(f"reward errors {latest.get('errors', 0)}" + (" (see the log: those answers scored 0)"
                                                               if latest.get("errors") else ""))
    parts = [f"**Sampled answers** · {' · '.join(facts)}"]
    for smp in latest.get("samples") or []:
        per = ", ".join(f"{e(str(k))} {v:.2f}" for k, v in (smp.get("rewards") or {}).items())
        prompt = " ".join(str(smp.get("prompt", "")).split())
        prompt = prompt if len(prompt) <= 160 else prompt[:160] + "…"
        parts.append(f"reward **{smp.get('reward', 0):.2f}** ({per}) · prompt: <i>{e(prompt)}</i>"
                     f"\n<pre class=\"fts-sample\">{e(str(smp.get('answer', '')))}</pre>")
    return "\n\n".join(parts)


def _if_changed(cache: dict, name: str, value, signature=None):
    """``value`` when the page has not been sent it yet (by its signature, or the value itself), else a no-op
    update. The signatures live in the page's metrics cache, which starts afresh for another run or attempt."""
    sent = cache.setdefault("sent", {})
    key = value if signature is None else signature
    if name in sent and sent[name] == key:
        return gr.update()
    sent[name] = key
    return value


def _what_changed(run_id: int, cache: dict) -> str:
    """The run page's closing report once the run is evaluated (recomputed only when a newer evaluation lands)."""
    from core.evaluate.results import latest_for_runs

    try:
        ev = latest_for_runs([run_id]).get(run_id)
    except Exception:  # noqa: BLE001 - the page keeps refreshing without it
        return ""
    if ev is None:
        return "\n\nNot evaluated yet: the **Evaluate** tab compares it with its base on held-out rows."
    if cache.get("report_eval") != ev.id:
        from ui.quickstart import report_markdown

        cache["report_eval"], cache["report"] = ev.id, report_markdown(ev)
    return "\n\n" + cache["report"]


def config_from_inputs(values: dict) -> TrainConfig:
    data = {k: v for k, v in values.items() if v is not None and v != ""}  # empty inputs keep the defaults
    targets = data.pop("lora_target_modules_text", "all-linear") or "all-linear"
    data["lora_target_modules"] = [t.strip() for t in targets.replace("\n", ",").split(",") if t.strip()]
    grpo_only = ("rewards", "num_generations", "max_completion_length", "temperature", "reward_regex", "length_min",
                 "length_max")
    if data.get("objective") != "grpo":  # the GRPO box's fields are hidden for the other objectives
        for k in grpo_only:
            data.pop(k, None)
    for k in ("max_steps", "batch_size", "grad_accum", "max_length", "lora_r", "lora_alpha", "seed", "save_steps",
              "eval_steps", "num_generations", "max_completion_length", "length_min", "length_max"):
        if data.get(k) is not None:
            data[k] = int(data[k])
    upload = data.pop("upload", None)
    if upload:
        data["dataset"] = upload if isinstance(upload, str) else getattr(upload, "name", str(upload))
    data["dataset"] = str(data.get("dataset") or "").strip()
    if not data["dataset"]:
        raise ConfigError("choose a dataset (imported in the Data tab) or upload a data file")
    return TrainConfig.from_dict(data)


def _has_template(ref: str) -> bool | None:
    from core.data.templates import model_has_chat_template

    try:
        return model_has_chat_template(ref)
    except Exception:  # noqa: BLE001 - a hint must never break the form
        return None


def template_note(base_model: str | None, choice: str | None, has: bool | None = ...) -> str:
    """What the Prompt template choice means for this base model, in one line (the same whichever input changed).
    ``has``: whether the model has a chat template, when the caller looked it up already."""
    ref = (base_model or "").strip() or "default"
    name = html.escape(ref).replace("`", "'")
    if has is ...:
        has = _has_template(ref)
    own = not choice or choice == OWN
    label = (TEMPLATES[choice].label if choice in TEMPLATES else f"copied from {html.escape(str(choice))}") \
        if not own else ""
    if has:
        return (f"`{name}` has its own chat template; pick another only to replace it." if own else
                f"`{name}` has its own chat template; it is replaced by **{label}** — {template_cost(choice)}.")
    if has is None:
        head = f"Whether `{name}` has a chat template is not known here (not downloaded yet)."
        return (f"{head} For a base model, pick a prompt template." if own else
                f"{head} Prompts will use **{label}** — {template_cost(choice)}.")
    if own:
        return (f"**`{name}` has no chat template** (a base model): pick a prompt template — a conversation dataset "
                "is refused without one.")
    return (f"**`{name}` has no chat template** (a base model): its prompts will use the **{label}** template — "
            f"{template_cost(choice)}. It is saved with the adapter and used by Evaluate, the Playground and Deploy.")


def template_hint(base_model: str | None, current: str | None = None):
    """The Prompt template choice and its note for a base model: a model without a chat template gets one
    preselected (ChatML/Llama-3 when its vocabulary already has their tokens, else plain-text Alpaca); a choice
    already made (by hand or by a recipe) stays."""
    from core.data.templates import suggest_choice

    ref = (base_model or "").strip() or "default"
    has = _has_template(ref)
    if has:
        choice = OWN
    elif has is None or (current and current != OWN):
        choice = current or OWN
    else:
        try:
            from core.models import load_tokenizer

            choice = suggest_choice(load_tokenizer(ref))
        except Exception:  # noqa: BLE001
            choice = "alpaca"
    return gr.update(value=choice), template_note(ref, choice, has)


def template_cost(choice: str | None) -> str:
    t = TEMPLATES.get(choice or "")
    if t is None:
        return "copied from that model; any special tokens it writes that the vocabulary lacks are added and trained"
    if not t.special_tokens:
        return "plain text, no new tokens, no extra memory"
    return (f"{len(t.special_tokens)} special tokens; those new to the vocabulary get embedding rows trained "
            "(PEFT trainable tokens: extra memory, see Estimate)")


RECIPE_FIELDS = ("method", "chat_template", "learning_rate", "batch_size", "grad_accum", "max_length", "num_epochs",
                 "max_steps", "lora_r", "lora_alpha", "gradient_checkpointing")


def recipe_values(name: str | None) -> tuple[dict, str]:
    """(field values, note) of a recipe for the form; the note says what this machine lacks to run it."""
    if not name:
        return {}, ""
    r = get_recipe(name)
    values = {"base_model": r.base_model, **{k: r.settings[k] for k in RECIPE_FIELDS if k in r.settings}}
    needs = recipe_needs(r)
    lack = ("\n\n**This machine lacks:** " + "; ".join(needs)) if needs else "\n\nEverything it needs is here."
    return values, f"**{r.label}** — `{r.base_model}`, {r.settings.get('method')}. {r.note}{lack}"


def build_tab() -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("#### New run")
            with gr.Row():
                recipe = gr.Dropdown(choices=recipe_menu(), value=None, label="Recipe (fills the form)",
                                     elem_id="train-recipe", scale=4)
            recipe_md = gr.Markdown(elem_id="train-recipe-note")
            base_model = gr.Dropdown(
                choices=[("SmolLM2-135M-Instruct (embedded default)", "default")], value="default",
                allow_custom_value=True, label="Base model",
                info="'default', a local model folder, or a Hub id (needs network)")
            chat_template = gr.Dropdown(
                choices=template_menu(), value=OWN, allow_custom_value=True, label="Prompt template",
                info="how conversations become text; for a base model without one — or type a model id / folder "
                     "to copy its chat template", elem_id="train-template")
            template_md = gr.Markdown(elem_id="train-template-note")
            with gr.Row():
                dataset = gr.Dropdown(choices=dataset_choices(), value=None, allow_custom_value=True,
                                      label="Training data", info="a dataset imported in the Data tab, or a file path",
                                      scale=4)
                refresh_ds = gr.Button("↻", scale=0, min_width=40, size="sm")
            data_hint = gr.Markdown(elem_id="train-data-hint")
            upload = gr.File(label="…or upload a data file (JSON/JSONL/CSV/Parquet)", file_count="single",
                             type="filepath", height=120)
            method = gr.Radio(["lora", "qlora", "full"], value="lora", label="Method",
                              info="QLoRA = 4-bit base + LoRA (bitsandbytes)")
            with gr.Row():
                objective = gr.Dropdown(OBJECTIVES, value="sft", label="Objective", scale=3,
                                        info="DPO / ORPO train on preference pairs (chosen vs rejected answers)",
                                        elem_id="train-objective")
                beta = gr.Number(DEFAULTS.beta, label="Beta (DPO) / lambda (ORPO) / KL (GRPO)", minimum=0, scale=1,
                                 elem_id="train-beta")
            with gr.Group(visible=False, elem_id="train-grpo") as grpo_box:
                rewards = gr.CheckboxGroup([(f"{r.name} — {r.help}", r.name) for r in REWARDS.values()],
                                           value=list(DEFAULTS.rewards), label="Rewards (summed per answer)",
                                           elem_id="train-rewards")
                with gr.Row():
                    num_generations = gr.Number(DEFAULTS.num_generations, label="Answers per prompt", precision=0,
                                                minimum=2, elem_id="train-generations")
                    max_completion_length = gr.Number(DEFAULTS.max_completion_length, label="Max new tokens",
                                                      precision=0, minimum=1)
                    temperature = gr.Number(DEFAULTS.temperature, label="Temperature", minimum=0.01)
                with gr.Row():
                    reward_regex = gr.Textbox(label="Pattern (reward 'regex')", placeholder=r"^\{.*\}$", scale=2)
                    length_min = gr.Number(0, label="Min chars (reward 'length')", precision=0, minimum=0)
                    length_max = gr.Number(0, label="Max chars (reward 'length')", precision=0, minimum=0)
            with gr.Row():
                num_epochs = gr.Number(DEFAULTS.num_epochs, label="Epochs", minimum=0)
                max_steps = gr.Number(DEFAULTS.max_steps, label="Max steps (-1 = epochs)", precision=0)
            with gr.Row():
                learning_rate = gr.Number(DEFAULTS.learning_rate, label="Learning rate")
                batch_size = gr.Number(DEFAULTS.batch_size, label="Batch size", precision=0, minimum=1)
                max_length = gr.Number(DEFAULTS.max_length, label="Max length (tokens)", precision=0, minimum=8)
            with gr.Accordion("Advanced", open=False):
                name = gr.Textbox(label="Run name", placeholder="run-<id>")
                with gr.Row():
                    grad_accum = gr.Number(DEFAULTS.grad_accum, label="Grad accumulation", precision=0, minimum=1)
                    lr_scheduler = gr.Dropdown(["linear", "cosine", "constant", "constant_with_warmup",
                                                "cosine_with_restarts", "polynomial"], value=DEFAULTS.lr_scheduler,
                                               label="LR scheduler")
                    warmup_ratio = gr.Number(DEFAULTS.warmup_ratio, label="Warmup ratio")
                with gr.Row():
                    lora_r = gr.Number(DEFAULTS.lora_r, label="LoRA r", precision=0)
                    lora_alpha = gr.Number(DEFAULTS.lora_alpha, label="LoRA alpha", precision=0)
                    lora_dropout = gr.Number(DEFAULTS.lora_dropout, label="LoRA dropout")
                lora_targets = gr.Textbox("all-linear", label="LoRA target modules",
                                          info="'all-linear' or names like q_proj,v_proj")
                with gr.Row():
                    weight_decay = gr.Number(DEFAULTS.weight_decay, label="Weight decay")
                    precision = gr.Dropdown(["auto", "fp32", "bf16", "fp16"], value="auto", label="Precision",
                                            info="auto: bf16/fp16 on GPU, fp32 on CPU")
                    seed = gr.Number(DEFAULTS.seed, label="Seed", precision=0)
                with gr.Row():
                    eval_split = gr.Number(DEFAULTS.eval_split, label="Eval split (0-0.5)")
                    eval_steps = gr.Number(DEFAULTS.eval_steps, label="Eval every N steps", precision=0)
                    save_steps = gr.Number(DEFAULTS.save_steps, label="Checkpoint every N steps", precision=0)
                with gr.Row():
                    gradient_checkpointing = gr.Checkbox(DEFAULTS.gradient_checkpointing,
                                                         label="Gradient checkpointing")
                    packing = gr.Checkbox(DEFAULTS.packing, label="Padding-free batching")
                skip_preflight = gr.Checkbox(False, label="Start even if the memory pre-flight check warns")
            start_btn = gr.Button("Start training", variant="primary")
            start_msg = gr.Markdown()

        with gr.Column(scale=3, min_width=420):
            with gr.Row():
                gr.Markdown("#### Runs")
                mine = mine_box("Only my runs", "train-mine")
            gr.Markdown("Numbers are job numbers: training runs, evaluations and exports share them, so the runs "
                        "listed here can skip some.", elem_id="train-jobs-note")
            runs_table = gr.Dataframe(value=runs_frame, headers=run_columns(), interactive=False, max_height=260,
                                      wrap=True, column_widths=run_column_widths(), elem_id="train-runs")
            metrics_cache = gr.State(new_metrics_cache())
            with gr.Row():
                # a custom value: a run deleted (here or elsewhere) between two refreshes is "not found", not an
                # error toast from the dropdown's own check
                selected = gr.Dropdown(choices=run_choices(), value=default_selected_run(), label="Selected run",
                                       scale=3, allow_custom_value=True)
                stop_btn = gr.Button("Stop", variant="stop", scale=1)
                resume_btn = gr.Button("Resume", scale=1)
            with gr.Row():
                extra_steps = gr.Number(20, label="More steps", precision=0, minimum=1, scale=1)
                continue_as = gr.Dropdown([("same objective", ""),
                                           *[(lab.split(" — ")[0], v) for lab, v in OBJECTIVES]], value="",
                                          label="Continue as", scale=1, elem_id="train-continue-as",
                                          info="SFT then GRPO: same data")
                continue_btn = gr.Button("Continue training (new run from this adapter)", scale=2)
            with gr.Accordion("Rename, tag or delete the selected run", open=False):
                with gr.Row():
                    new_name = gr.Textbox(label="New name", scale=3, elem_id="train-new-name")
                    rename_btn = gr.Button("Rename", scale=1, elem_id="train-rename")
                with gr.Row():
                    new_tags = gr.Textbox(label="Tags (space- or comma-separated; they replace the run's tags)",
                                          scale=3, elem_id="train-tags", placeholder="baseline demo")
                    tag_btn = gr.Button("Set tags", scale=1, elem_id="train-tag")
                    delete_btn = gr.Button("Delete…", variant="stop", scale=1, elem_id="train-delete")
                with gr.Row(visible=False) as confirm_row:
                    confirm_md = gr.Markdown(elem_id="train-delete-confirm")
                    confirm_btn = gr.Button("Yes, delete it", variant="stop", scale=0, elem_id="train-delete-yes")
                    cancel_btn = gr.Button("Cancel", scale=0, elem_id="train-delete-no")
            action_msg = gr.Markdown()
            progress = gr.HTML()
            with gr.Row():
                # a fixed colour domain: without it the plot keeps the (empty) domain of its first frame
                loss_plot = gr.LinePlot(x="step", y="value", color="series", title="Loss", height=260,
                                        x_title="step", y_title="loss",
                                        color_map={"train loss": "#6366f1", "eval loss": "#f59e0b"})
                # the learning rate, or for DPO / ORPO the reward margin, accuracy and rewards
                # GRPO: the mean reward, its spread, the KL and each reward's mean (every series needs a colour
                # here: one outside the map is not drawn)
                lr_plot = gr.LinePlot(x="step", y="value", color="series", title="Learning rate · preference · reward",
                                      height=260, x_title="step", y_title="value",
                                      color_map={"learning rate": "#10b981", "reward margin": "#6366f1",
                                                 "accuracy": "#f59e0b", "chosen reward": "#22c55e",
                                                 "rejected reward": "#ef4444", "mean reward": "#6366f1",
                                                 "reward spread": "#a5b4fc", "KL to start": "#ef4444",
                                                 **dict(zip(REWARDS, ("#f59e0b", "#22c55e", "#0ea5e9", "#d946ef",
                                                                      "#64748b")))})
            error_md = gr.Markdown()
            with gr.Accordion("Log tail", open=True):
                log_box = gr.Textbox(lines=LOG_LINES, max_lines=LOG_LINES, show_label=False, autoscroll=True)
            with gr.Accordion("Config (YAML)", open=False):
                config_box = gr.Code(language="yaml", show_label=False)
    from ui.compare import build_section as build_compare

    build_compare()

    detail_outputs = [progress, loss_plot, lr_plot, log_box, config_box, error_md, metrics_cache]
    config_inputs = {
        "name": name, "base_model": base_model, "chat_template": chat_template, "dataset": dataset, "upload": upload,
        "method": method, "objective": objective, "beta": beta,
        "num_epochs": num_epochs, "max_steps": max_steps, "learning_rate": learning_rate,
        "batch_size": batch_size, "max_length": max_length, "grad_accum": grad_accum,
        "lr_scheduler": lr_scheduler, "warmup_ratio": warmup_ratio, "lora_r": lora_r, "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout, "lora_target_modules_text": lora_targets, "weight_decay": weight_decay,
        "precision": precision, "seed": seed, "eval_split": eval_split, "eval_steps": eval_steps,
        "save_steps": save_steps, "gradient_checkpointing": gradient_checkpointing, "packing": packing,
        "rewards": rewards, "num_generations": num_generations, "max_completion_length": max_completion_length,
        "temperature": temperature, "reward_regex": reward_regex, "length_min": length_min, "length_max": length_max,
    }
    keys = list(config_inputs)

    def start(request: gr.Request, *values):  # the request first: gradio injects only positional special args
        *cfg_values, skip = values
        message, run_id = start_run(dict(zip(keys, cfg_values)), skip_preflight=bool(skip), owner=user_of(request))
        if run_id is None:
            return message, gr.update()
        return message, gr.update(choices=run_choices(), value=str(run_id))

    start_btn.click(start, inputs=[*config_inputs.values(), skip_preflight], outputs=[start_msg, selected])

    def act(action, run_id, steps, request=None, objective=None):
        if not run_id:
            return "Select a run first.", gr.update()
        from core.users import NotAllowed, check_can_manage

        try:
            rid = int(run_id)
            user = user_of(request)
            check_can_manage(runs.get_run(rid), user, action)  # anyone may look; the owner (or an admin) acts
            if action == "stop":
                run = runs.stop(rid)
                return f"Run #{rid} {run.status} at {_now()}.", gr.update(choices=run_choices())
            if action == "resume":
                run = runs.resume(rid)
                ck = f" from {run.resume_from_checkpoint.rsplit('/', 1)[-1]}" if run.resume_from_checkpoint else \
                    " from the start (no checkpoint yet)"
                return f"Run #{rid} resumed{ck} at {_now()}.", gr.update(choices=run_choices())
            run = train_jobs.continue_training(rid, int(steps or 0), owner=user, objective=objective or None)
            how = f" with {objective.upper()}" if objective else ""
            return (f"Run #{run.id} continues #{rid}{how} for {int(steps)} steps.",
                    gr.update(choices=run_choices(), value=str(run.id)))
        except NotAllowed as exc:
            return f"**Not allowed:** {md_text(exc)}", gr.update()
        except (JobError, ConfigError, ValueError) as exc:
            return f"**Error:** {md_text(exc)}", gr.update()

    def on_stop(run_id, steps, request: gr.Request):
        return act("stop", run_id, steps, request)

    def on_resume(run_id, steps, request: gr.Request):
        return act("resume", run_id, steps, request)

    def on_continue(run_id, steps, objective, request: gr.Request):
        return act("continue", run_id, steps, request, objective)

    def on_tag(run_id, tags, request: gr.Request):
        return manage_run("tag", run_id, user_of(request), tags)

    tag_btn.click(on_tag, [selected, new_tags], [action_msg, selected])

    def on_rename(run_id, name, request: gr.Request):
        return manage_run("rename", run_id, user_of(request), name)

    def on_delete_ask(run_id):
        return delete_question(run_id)

    def on_delete(run_id, request: gr.Request):
        return (*manage_run("delete", run_id, user_of(request)), gr.update(visible=False))

    rename_btn.click(on_rename, [selected, new_name], [action_msg, selected])
    delete_btn.click(on_delete_ask, [selected], [confirm_md, confirm_row])
    confirm_btn.click(on_delete, [selected], [action_msg, selected, confirm_row])
    cancel_btn.click(lambda: gr.update(visible=False), None, [confirm_row])
    stop_btn.click(on_stop, [selected, extra_steps], [action_msg, selected], concurrency_limit=None)
    resume_btn.click(on_resume, [selected, extra_steps], [action_msg, selected])
    continue_btn.click(on_continue, [selected, extra_steps, continue_as], [action_msg, selected])

    def on_objective(choice, current_beta):
        """The GRPO box shows for GRPO; beta takes the objective's default when it held the other's."""
        grpo = choice == "grpo"
        beta_update = gr.update()
        if grpo and current_beta == DEFAULTS.beta:
            beta_update = gr.update(value=0.0)
        elif not grpo and not current_beta:
            beta_update = gr.update(value=DEFAULTS.beta)
        return gr.update(visible=grpo), beta_update

    objective.change(on_objective, [objective, beta], [grpo_box, beta])

    base_model.change(template_hint, [base_model, chat_template], [chat_template, template_md])
    chat_template.change(template_note, [base_model, chat_template], [template_md], show_progress="hidden")
    recipe_targets = {"base_model": base_model, **{k: config_inputs[k] for k in RECIPE_FIELDS if k in config_inputs},
                      "chat_template": chat_template}

    def apply_recipe(name):
        values, note = recipe_values(name)
        return [note, *[gr.update(value=values[k]) if k in values else gr.update() for k in recipe_targets]]

    recipe.change(apply_recipe, [recipe], [recipe_md, *recipe_targets.values()])

    selected.change(run_details, [selected, metrics_cache], detail_outputs)
    refresh_ds.click(lambda: refresh_lists(), None, [dataset, data_hint])  # defined below

    timer = gr.Timer(REFRESH_S)
    timer.tick(tick, [selected, metrics_cache, mine], [runs_table, selected, *detail_outputs],
               show_progress="hidden", concurrency_limit=None)

    def refresh_lists():
        choices = dataset_choices()
        hint = ("" if choices else "No datasets yet: **Load the demo task** or import a file in the **Data** tab (or "
                "run the **Quick start** above) — or upload a file here.")
        return gr.update(choices=choices), hint

    return refresh_lists, [], [dataset, data_hint]  # app.py runs it when a page (or the tab) opens: no stale lists


def tick(current: str | None, cache: dict | None, mine: bool = False, request: gr.Request = None):
    """The 1 s refresh: runs table (all, or only the signed-in user's), selection, and the selected run's details
    (new metric rows only)."""
    who = owner_filter(mine, request)
    rows = [r for r in train_runs() if is_mine(r.owner, who)]
    choices = run_choices(rows)
    ids = [c[1] for c in choices]
    value = current if current in ids else default_selected_run(rows)
    head, *details, cache = run_details(value, cache)
    table = runs_frame(rows)
    return (_if_changed(cache, "table", table, table.to_json()),
            _if_changed(cache, "choices", gr.update(choices=choices, value=value), (tuple(choices), value)),
            head, *details, cache)


def delete_question(run_id: str | None):
    """The Delete… button: what would go, asked before anything is deleted. (question markdown, row update)"""
    if not run_id:
        return "Select a run first.", gr.update(visible=True)
    try:
        run = runs.get_run(int(run_id))
    except (JobError, ValueError) as exc:
        return f"**Error:** {md_text(exc)}", gr.update(visible=True)
    return (f"Delete run **#{run.id} {md_text(run.name)}** ({run.status.value})? Its checkpoints, adapter, merged "
            "model, log, metrics, evaluations and exports go for good; runs continued from it stay.",
            gr.update(visible=True))


def manage_run(action: str, run_id: str | None, user: str, name: str = ""):
    """Rename, tag or delete the selected run (its owner or an admin). (message, selection update)"""
    if not run_id:
        return "Select a run first.", gr.update()
    from core.users import NotAllowed, check_can_manage

    try:
        rid = int(run_id)
        check_can_manage(runs.get_run(rid), user, action)
        if action == "rename":
            run = train_jobs.rename_run(rid, name)
            choices = run_choices()
            return f"Run #{rid} is now **{md_text(run.name)}**.", gr.update(choices=choices, value=str(rid))
        if action == "tag":
            run = train_jobs.tag_run(rid, name)
            tags = " ".join(f"#{t}" for t in run.tags or []) or "no tags"
            return f"Run #{rid}: {md_text(tags)}.", gr.update()
        gone = delete_run(rid)
        also = f" with job(s) {', '.join(f'#{i}' for i in gone['runs'][1:])}" if gone["runs"][1:] else ""
        rows = train_runs()
        return (f"Run #{rid} deleted{also}; {gone['evaluations']} evaluation(s) went with it.",
                gr.update(choices=run_choices(rows), value=default_selected_run(rows)))
    except NotAllowed as exc:
        return f"**Not allowed:** {md_text(exc)}", gr.update()
    except (JobError, ValueError) as exc:
        return f"**Error:** {md_text(exc)}", gr.update()


def start_run(values: dict, *, skip_preflight: bool = False, owner: str = "") -> tuple[str, int | None]:
    """Start button: build the config, run the memory pre-flight check, queue the run. (message, run id or None)."""
    from core.data import DatasetError

    try:
        values = _upload_as_dataset(values, owner)
        config = config_from_inputs(values)  # every reference in it passes core.access's resolver at submit
        warn = _preflight_warning(config)
        if warn and not skip_preflight:
            return (f"**Warning:** {warn}\n\nTick *Start even if the memory pre-flight check warns* (Advanced) to "
                    "start anyway.", None)
        run = train_jobs.submit_training(config, owner=owner)
    except (ConfigError, JobError, DatasetError) as exc:
        return f"**Error:** {md_text(exc)}", None
    note = f"\n\n**Warning:** {warn}" if warn else ""
    if run.status == RunStatus.queued and run.error:  # the backend could not take it yet: say why
        note += f"\n\n{md_text(run.error)}"
    # an event, not a status: the status changes, the Runs table on the right follows it
    return f"Run #{run.id} started at {_now()} — its status and progress are under **Runs** on the right.{note}", \
        run.id


def _now() -> str:
    import time

    return time.strftime("%H:%M:%S")


def _upload_as_dataset(values: dict, owner: str) -> dict:
    """A file uploaded in the Train tab becomes a dataset of its uploader's (every row for training), so the run's
    config names that dataset — never the server's temporary path of someone's upload."""
    upload = values.get("upload")
    if not upload:
        return values
    from pathlib import Path

    from core.data import import_dataset

    path = upload if isinstance(upload, str) else getattr(upload, "name", str(upload))
    result = import_dataset(path, split={"validation": 0.0, "test": 0.0}, model=None, source_label=Path(path).name,
                            owner=owner)
    return {**values, "upload": None, "dataset": str(result.dataset_id)}


def _preflight_warning(config: TrainConfig) -> str | None:
    """The Estimate tab's pre-flight memory check, when available; never blocks on its own failure."""
    try:
        from core.estimate import preflight_check
    except ImportError:
        return None
    try:
        result = preflight_check(config)
    except Exception:  # noqa: BLE001 - an estimate problem must not stop training
        return None
    return None if result.ok else result.message
