"""Train tab, left column: the New run form. Its widgets are built from TrainConfig's field metadata
(core.jobconfig: label, place on the form, "GRPO only"), so a hyperparameter is one field there; the few inputs with
a life of their own (base model, prompt template, data, upload) get their choices and hints here.
"""
from __future__ import annotations

import html

import gradio as gr

from core.data.templates import OWN, TEMPLATES, template_menu
from core.jobconfig import applies, base_type, choices_of, field_meta, form_rows, int_fields
from core.runs import JobError, RunStatus
from core.train import jobs as train_jobs
from core.train.config import ConfigError, TrainConfig
from core.train.recipes import get_recipe, recipe_menu, recipe_needs
from core.train.rewards import REWARDS
from ui.common import md_text, now_hms, on_processes

# what each objective means, in the dropdown (the values are TrainConfig's: a new one shows as its bare name)
OBJECTIVE_LABELS = {"sft": "SFT — supervised, on conversations",
                    "dpo": "DPO — preference pairs, against the model at step 0",
                    "orpo": "ORPO — preference pairs, SFT + odds ratio, no reference",
                    "grpo": "GRPO — sampled answers scored by reward programs"}
# what the page adds to a field's widget beyond its metadata (element ids the tests and styles use, widths, examples)
WIDGET_EXTRAS = {
    "objective": {"scale": 3, "elem_id": "train-objective"},
    "beta": {"scale": 1, "elem_id": "train-beta"},
    "rewards": {"elem_id": "train-rewards"},
    "num_generations": {"elem_id": "train-generations"},
    "reward_regex": {"placeholder": r"^\{.*\}$", "scale": 2},
    "name": {"placeholder": "run-<id>"},
    # a checkbox group (not a dropdown: a focused Gradio 6 dropdown drops updates); none ticked = no tracker
    "report_to": {"choices": [("TensorBoard", "tensorboard"), ("MLflow", "mlflow"), ("trackio", "trackio"),
                              ("W&B (offline without WANDB_API_KEY)", "wandb")], "elem_id": "train-report-to"},
}


def objective_choices() -> list[tuple[str, str]]:
    return [(OBJECTIVE_LABELS.get(v, v), v) for v in choices_of(TrainConfig, "objective")]


def reward_choices() -> list[tuple[str, str]]:
    return [(f"{r.name} — {r.help}", r.name) for r in REWARDS.values()]


def widget(name: str, component=None, **overrides):
    """The input of a TrainConfig field, from its type and metadata: a number box (whole numbers for an int), a
    checkbox, a dropdown (or radio) of the Literal's values, a text box, a checkbox group; ``overrides`` win."""
    field = TrainConfig.model_fields[name]
    m = field_meta(field)
    tp = base_type(field)
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    kw = {"label": m.get("label", name), **({"info": m["info"]} if "info" in m else {})}
    if component is None:
        if m.get("widget") == "checkboxes":
            component, kw["value"] = gr.CheckboxGroup, list(default or [])
        elif tp is list:  # typed as a comma-separated list
            component, kw["value"] = gr.Textbox, ", ".join(default or [])
        elif choices_of(TrainConfig, name) or m.get("widget") == "radio":
            component = gr.Radio if m.get("widget") == "radio" else gr.Dropdown
            kw.update(choices=choices_of(TrainConfig, name), value=default)
        elif tp is bool:
            component, kw["value"] = gr.Checkbox, default
        elif tp in (int, float):
            component, kw["value"] = gr.Number, default
            kw.update({"precision": 0} if tp is int else {})
            kw.update({"minimum": m["minimum"]} if "minimum" in m else {})
        else:
            component, kw["value"] = gr.Textbox, default or ""
    return component(**{**kw, **WIDGET_EXTRAS.get(name, {}), **overrides})


def build_group(group: str, **overrides) -> dict:
    """A form group's widgets, row by row as the metadata places them ({field: component}); ``overrides``:
    {field: {kwarg: value}}."""
    built = {}
    for row in form_rows(TrainConfig, group):
        if len(row) == 1:
            built[row[0]] = widget(row[0], **overrides.get(row[0], {}))
            continue
        with gr.Row():
            for name in row:
                built[name] = widget(name, **overrides.get(name, {}))
    return built


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


def config_from_inputs(values: dict) -> TrainConfig:
    """The form's values ({field: value}, plus ``upload``) as a TrainConfig: empty inputs keep the defaults, the fields
    of another objective (GRPO's box, hidden) are left out, whole numbers and typed lists are what their types say."""
    data = {k: v for k, v in values.items() if v is not None and v != ""}
    fields = TrainConfig.model_fields
    for k in [k for k in data if k in fields]:
        if not applies(TrainConfig, k, data):
            del data[k]
        elif base_type(fields[k]) is list and isinstance(data[k], str):  # "q_proj, v_proj" or one a line
            data[k] = [t.strip() for t in data[k].replace("\n", ",").split(",") if t.strip()]
    for k in int_fields(TrainConfig):
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


def host_processes() -> tuple[int, str]:
    """(processes this host can train with, what they are); (1, ...) when it cannot be read."""
    try:
        from core.train.device import process_capacity

        return process_capacity()
    except Exception:  # noqa: BLE001 - a form without the parallel fields beats a broken tab
        return 1, "process"


def build_form():
    """The New run column. Returns (inputs {field or "upload": component}, skip_preflight, start button, start
    message, refresh_lists, its outputs); wires the form's own events (objective, template, recipe, data refresh)."""
    gr.Markdown("#### New run")
    with gr.Row():
        recipe = gr.Dropdown(choices=recipe_menu(), value=None, label="Recipe (fills the form)",
                             elem_id="train-recipe", scale=4)
    recipe_md = gr.Markdown(elem_id="train-recipe-note")
    inputs = {"base_model": widget("base_model", gr.Dropdown, allow_custom_value=True,
                                   choices=[("SmolLM2-135M-Instruct (embedded default)", "default")]),
              "chat_template": widget("chat_template", gr.Dropdown, choices=template_menu(), value=OWN,
                                      allow_custom_value=True, elem_id="train-template")}
    template_md = gr.Markdown(elem_id="train-template-note")
    with gr.Row():
        inputs["dataset"] = widget("dataset", gr.Dropdown, choices=dataset_choices(), value=None,
                                   allow_custom_value=True, scale=4)
        refresh_ds = gr.Button("↻", scale=0, min_width=40, size="sm")
    data_hint = gr.Markdown(elem_id="train-data-hint")
    inputs["upload"] = gr.File(label="…or upload a data file (JSON/JSONL/CSV/Parquet)", file_count="single",
                               type="filepath", height=120)
    inputs |= build_group("method", objective={"choices": objective_choices()})
    with gr.Group(visible=False, elem_id="train-grpo") as grpo_box:
        inputs |= build_group("grpo", rewards={"choices": reward_choices()})
    inputs |= build_group("basic")
    with gr.Accordion("Advanced", open=False):
        inputs |= build_group("advanced")
        capacity, what = host_processes()
        with gr.Group(visible=capacity > 1, elem_id="train-parallel"):  # only where several processes can run
            inputs |= build_group("parallel", num_processes={"maximum": max(1, capacity),
                                                             "info": f"this host: {capacity} {what}"})
        skip_preflight = gr.Checkbox(False, label="Start even if the memory pre-flight check warns")
    start_btn = gr.Button("Start training", variant="primary")
    start_msg = gr.Markdown()

    beta, objective = inputs["beta"], inputs["objective"]
    default_beta = TrainConfig.model_fields["beta"].default

    def on_objective(choice, current_beta):
        """The GRPO box shows for GRPO; beta takes the objective's default when it held the other's."""
        grpo = choice == "grpo"
        beta_update = gr.update()
        if grpo and current_beta == default_beta:
            beta_update = gr.update(value=0.0)
        elif not grpo and not current_beta:
            beta_update = gr.update(value=default_beta)
        return gr.update(visible=grpo), beta_update

    objective.change(on_objective, [objective, beta], [grpo_box, beta])
    inputs["num_processes"].change(on_processes, [inputs["num_processes"], inputs["distributed"]],
                                   [inputs["distributed"]], show_progress="hidden")
    base_model, chat_template = inputs["base_model"], inputs["chat_template"]
    base_model.change(template_hint, [base_model, chat_template], [chat_template, template_md])
    chat_template.change(template_note, [base_model, chat_template], [template_md], show_progress="hidden")
    recipe_targets = {"base_model": base_model, **{k: inputs[k] for k in RECIPE_FIELDS if k in inputs},
                      "chat_template": chat_template}

    def apply_recipe(name):
        values, note = recipe_values(name)
        return [note, *[gr.update(value=values[k]) if k in values else gr.update() for k in recipe_targets]]

    recipe.change(apply_recipe, [recipe], [recipe_md, *recipe_targets.values()])

    def refresh_lists():
        choices = dataset_choices()
        hint = ("" if choices else "No datasets yet: **Load the demo task** or import a file in the **Data** tab (or "
                "run the **Quick start** above) — or upload a file here.")
        return gr.update(choices=choices), hint

    refresh_ds.click(refresh_lists, None, [inputs["dataset"], data_hint])
    return inputs, skip_preflight, start_btn, start_msg, refresh_lists, [inputs["dataset"], data_hint]


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
    return f"Run #{run.id} started at {now_hms()} — its status and progress are under **Runs** on the right.{note}", \
        run.id


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
