"""Playground tab: two models side by side on one prompt, tokens streaming in both panes at once; blind A/B votes and
an Elo leaderboard.

Both panes come out of one batched decode when they share base weights (base vs a LoRA run, or two runs of one
base): one forward pass per token for both (core.generate). Model outputs are shown as plain text. Handlers are
module-level so tests call them without a browser.
"""
from __future__ import annotations

import html
import random

import gradio as gr
import pandas as pd

from core import runs
from core.data import DatasetError, feedback
from core.deploy.deployments import list_deployments
from core.deploy.sources import resolve_source_or_deployment
from core.evaluate import arena
from core.generate import GenerateError, GenSettings, model_cache, share_prompt_format, stream
from core.quickstart import note_playground
from ui.common import GENERATION_SHARE, md_text, page_requester, user_of

LEADERBOARD_COLUMNS = ["model", "Elo", "votes", "wins", "losses", "ties", "both bad"]
COMPONENTS: dict = {}  # the last built tab's inputs, for the quick start's "open the Playground" stage
DEFAULT_PROMPT = "Explain in two sentences what fine-tuning a language model means."


def model_choices() -> list[tuple[str, str]]:
    """The base, every finished run, and every running deployment (its endpoint streams as one side)."""
    out = [("SmolLM2-135M-Instruct (embedded base)", "default")]
    for r in runs.list_runs(kind="train"):
        if r.adapter_path and r.status == runs.RunStatus.succeeded:
            out.append((f"run #{r.id} {r.name} ({r.method})", f"run:{r.id}"))
    for d in list_deployments(active_only=True):
        if d.status == "running":
            out.append((f"deployment #{d.id} {d.served_name} ({d.target})", f"deployment:{d.id}"))
    return out


def leaderboard_frame() -> pd.DataFrame:
    rows = [[s.label, round(s.rating, 1), s.votes, s.wins, s.losses, s.ties, s.both_bad]
            for s in arena.leaderboard()]
    return pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)


def new_state() -> dict:
    return {"order": None, "last": None}


def _stats(r) -> str:
    if r.error:
        return ""
    bits = []
    if r.time_to_first_token_s is not None:
        bits.append(f"first token {r.time_to_first_token_s:.2f} s")
    if r.tokens_per_s:
        bits.append(f"{r.tokens_per_s:.1f} tokens/s")
    bits.append(f"{r.tokens} tokens")
    return " · ".join(bits)


def _shown(text: str) -> str:
    """A pane message: the Chatbot renders HTML (sanitised, but an <img> still loads and a <a> still links), so
    prompts and answers go in escaped and show as the text they are; :func:`_conversation` reads them back."""
    return html.escape(text or "", quote=False)


def _said(content) -> str:
    """What a pane message said, unescaped (multi-turn chat sends the model what was typed, not its escaping)."""
    if isinstance(content, list):  # Gradio's structured content: [{"type": "text", "text": ...}]
        content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
    return html.unescape(str(content or ""))


def _conversation(system: str, history: list[dict], prompt: str) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if (system or "").strip() else []
    msgs += [{"role": m["role"], "content": _said(m["content"])} for m in history
             if m.get("role") in ("user", "assistant")]
    return msgs + [{"role": "user", "content": prompt}]


def _labels(sides, keys) -> list[str]:
    return [sides[i].source.label if sides[i] else keys[i] for i in (0, 1)]


def pane_updates(panes, sides, keys, blind):
    """The two chat panes, titled with their model (or just A / B in blind mode)."""
    labels = _labels(sides, keys)
    titles = ["A", "B"] if blind else [f"A: {labels[0]}", f"B: {labels[1]}"]
    return gr.update(value=panes[0], label=titles[0]), gr.update(value=panes[1], label=titles[1])


def respond(model_a: str, model_b: str, prompt: str, system: str, temperature: float, top_p: float,
            max_new_tokens: int, seed: int, chat_mode: bool, blind: bool, hist_a: list | None, hist_b: list | None,
            state: dict | None, user: str = ""):
    """Stream both answers. Yields (pane A history, pane B history, stats A, stats B, state, vote row, reveal).
    ``user``: who asked (both models answering with their quick-start run on a side is its stage 5)."""
    state = dict(state or new_state())
    prompt = (prompt or "").strip()
    hist_a = list(hist_a or []) if chat_mode else []
    hist_b = list(hist_b or []) if chat_mode else []
    if not prompt:
        yield hist_a, hist_b, "", "", state, gr.update(visible=False), "_Type a prompt first._"
        return
    who = page_requester() or ""
    if not GENERATION_SHARE.try_take(who):  # a fair share: one person's burst does not hold everyone's slots
        yield (hist_a, hist_b, "", "", state, gr.update(visible=False),
               "_You already have answers being generated: wait for them to finish (one request at a time per person "
               "in a shared studio, so everyone gets a turn)._")
        return
    try:
        yield from _answer(model_a, model_b, prompt, system, temperature, top_p, max_new_tokens, seed, chat_mode,
                           blind, hist_a, hist_b, state, user)
    finally:
        GENERATION_SHARE.release(who)


def _answer(model_a, model_b, prompt, system, temperature, top_p, max_new_tokens, seed, chat_mode, blind, hist_a,
            hist_b, state, user):
    keys = [model_a or "default", model_b or "default"]
    if blind:
        if state.get("order") is None or not chat_mode or not hist_a:
            state["order"] = random.sample([0, 1], 2)  # which picked model goes into pane A and B
        keys = [keys[i] for i in state["order"]]
    else:
        state["order"] = None
    settings = GenSettings(int(max_new_tokens or 256), float(temperature or 0.0), float(top_p or 1.0), int(seed or 0))
    sides = [None, None]
    errors = ["", ""]
    panes = [hist_a + [{"role": "user", "content": _shown(prompt)}],
             hist_b + [{"role": "user", "content": _shown(prompt)}]]
    convs = [_conversation(system, hist_a, prompt), _conversation(system, hist_b, prompt)]
    for i in (0, 1):
        panes[i].append({"role": "assistant", "content": "…loading the model"})
    yield *pane_updates(panes, sides, keys, blind), "", "", state, gr.update(visible=False), ""
    for i, key in enumerate(keys):
        try:  # a deployment's endpoint, or core.generate.resolve_source (every folder through core.access's resolver)
            sides[i] = model_cache().slot(resolve_source_or_deployment(key))
        except (GenerateError, ValueError) as exc:
            errors[i] = str(exc)
    if sides[0] is not None and sides[1] is not None:  # a base model without a template borrows the run's
        sides[0], sides[1] = share_prompt_format(sides[0], sides[1]), share_prompt_format(sides[1], sides[0])
    live = [i for i in (0, 1) if sides[i] is not None]
    borrowed = ["" if blind or sides[i] is None or not sides[i].template_from
                else f" · no chat template of its own: prompted as {sides[i].template_from} was trained"
                for i in (0, 1)]
    for i in (0, 1):
        panes[i][-1] = {"role": "assistant", "content": _shown(f"⚠ {errors[i]}") if errors[i] else ""}
    stats = ["", ""]
    last = None
    try:
        settings.validated()
        for results in stream([sides[i] for i in live], [convs[i] for i in live], settings):
            last = results
            for r, i in zip(results, live):
                panes[i][-1] = {"role": "assistant", "content": _shown(f"⚠ {r.error}" if r.error else r.text)}
                stats[i] = _stats(r) + (borrowed[i] if not r.error else "")
            yield *pane_updates(panes, sides, keys, blind), stats[0], stats[1], state, gr.update(visible=False), ""
    except GenerateError as exc:
        for i in live:
            panes[i][-1] = {"role": "assistant", "content": _shown(f"⚠ {exc}")}
        yield *pane_updates(panes, sides, keys, blind), "", "", state, gr.update(visible=False), ""
        return
    outputs = [_said(panes[0][-1]["content"]), _said(panes[1][-1]["content"])]
    labels = _labels(sides, keys)
    ok = last is not None and all(sides) and not any(r.error for r in last) and keys[0] != keys[1]
    state["last"] = {"prompt": prompt, "system": system or "", "keys": keys, "labels": labels, "outputs": outputs,
                     "history": {side: [m for m in convs[i][:-1] if m["role"] != "system"]
                                 for i, side in enumerate("ab")},  # chat mode: the turns before the prompt
                     "settings": {"temperature": settings.temperature, "top_p": settings.top_p,
                                  "max_new_tokens": settings.max_new_tokens, "seed": settings.seed},
                     "voted": False} if ok else None
    if ok:
        try:
            note_playground(user, keys)
        except Exception:  # noqa: BLE001, S110 - the quick start's check mark never costs an answer
            pass
    reveal = ""
    if blind and ok:
        reveal = "_Which answer is better? Vote below: the models are revealed after your vote._"
    yield (*pane_updates(panes, sides, keys, blind), stats[0], stats[1], state, gr.update(visible=bool(blind and ok)),
           reveal)


def vote(winner: str, state: dict | None, request: gr.Request | None = None):
    """Store a blind vote and reveal the sides. Returns (reveal markdown, leaderboard, vote row, state)."""
    state = dict(state or new_state())
    last = state.get("last")
    if not last or last.get("voted"):
        return "_Nothing to vote on: send a prompt in blind mode first._", leaderboard_frame(), gr.update(), state
    voter = user_of(request) or "anonymous"
    try:
        arena.record_vote(prompt=last["prompt"], system_prompt=last["system"], output_a=last["outputs"][0],
                          output_b=last["outputs"][1], model_a=last["keys"][0], model_b=last["keys"][1],
                          label_a=last["labels"][0], label_b=last["labels"][1], winner=winner, voter=voter,
                          settings=last["settings"], history=last.get("history"))
    except ValueError as exc:
        return f"**Error:** {html.escape(str(exc))}", leaderboard_frame(), gr.update(), state
    last["voted"] = True
    state["last"] = last
    said = {"a": "A is better", "b": "B is better", "tie": "a tie", "both_bad": "both bad"}[winner]
    reveal = (f"Vote stored ({said}). **A** was *{html.escape(last['labels'][0])}*, "
              f"**B** was *{html.escape(last['labels'][1])}*.")
    return reveal, leaderboard_frame(), gr.update(visible=False), state


def build_tab():
    choices = [("SmolLM2-135M-Instruct (embedded base)", "default")]
    with gr.Row():
        model_a = gr.Dropdown(choices=choices, value="default", allow_custom_value=True, label="Model A",
                              info="the base, a finished run, a running deployment, or a model / adapter folder",
                              elem_id="pg-model-a")
        model_b = gr.Dropdown(choices=choices, value="default", allow_custom_value=True, label="Model B",
                              info="the same choices; runs of one base share its weights", elem_id="pg-model-b")
        refresh = gr.Button("↻", scale=0, min_width=40, size="sm")
    with gr.Row():
        blind = gr.Checkbox(False, label="Blind A/B: shuffle the sides and vote (they are revealed after your vote)",
                            elem_id="pg-blind")
        chat_mode = gr.Checkbox(False, label="Chat (keep each side's history)", elem_id="pg-chat")
    with gr.Accordion("Generation settings", open=False):
        system = gr.Textbox(label="System prompt", lines=2)
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.0, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="Top-p")
            max_new = gr.Number(256, label="Max new tokens", precision=0, minimum=1, elem_id="pg-max-new")
            seed = gr.Number(0, label="Seed", precision=0)
    with gr.Row():
        with gr.Column():
            pane_a = gr.Chatbot(label="A", height=380, render_markdown=False, elem_id="pg-pane-a")
            stats_a = gr.Markdown(elem_id="pg-stats-a")
        with gr.Column():
            pane_b = gr.Chatbot(label="B", height=380, render_markdown=False, elem_id="pg-pane-b")
            stats_b = gr.Markdown(elem_id="pg-stats-b")
    prompt = gr.Textbox(value=DEFAULT_PROMPT, label="Prompt", lines=2, elem_id="pg-prompt")
    with gr.Row():
        send = gr.Button("Send to both", variant="primary", elem_id="pg-send")
        clear = gr.Button("Clear")
    reveal = gr.Markdown(elem_id="pg-reveal")
    with gr.Row(visible=False) as vote_row:
        vote_a = gr.Button("A is better", elem_id="pg-vote-a")
        vote_b = gr.Button("B is better", elem_id="pg-vote-b")
        vote_tie = gr.Button("Tie")
        vote_bad = gr.Button("Both bad")
    gr.Markdown("#### Leaderboard (Elo over blind votes)")
    board = gr.Dataframe(headers=LEADERBOARD_COLUMNS, interactive=False, elem_id="pg-board")
    state = gr.State(new_state())

    inputs = [model_a, model_b, prompt, system, temperature, top_p, max_new, seed, chat_mode, blind, pane_a, pane_b,
              state]
    outputs = [pane_a, pane_b, stats_a, stats_b, state, vote_row, reveal]
    # two people at once both get answers: generation interleaves per token on a shared model (one lock per model)
    send.click(_respond, inputs, outputs, concurrency_limit=4, concurrency_id="playground")
    prompt.submit(_respond, inputs, outputs, concurrency_limit=4, concurrency_id="playground")
    clear.click(lambda: ([], [], "", "", new_state(), gr.update(visible=False), ""), None, outputs)
    plan = preference_box()
    for btn, winner in ((vote_a, "a"), (vote_b, "b"), (vote_tie, "tie"), (vote_bad, "both_bad")):
        btn.click(_voter(winner), state, [reveal, board, vote_row, state]).then(votes_plan_text, None, plan)

    def refresh_lists(current_b):
        ch = model_choices()
        keys = [k for _, k in ch]
        # the natural first comparison: the base against the newest fine-tuned run
        run_keys = [k for k in keys if k.startswith("run:")]
        b = current_b if current_b in keys and current_b != "default" else (run_keys[-1] if run_keys else "default")
        return gr.update(choices=ch), gr.update(choices=ch, value=b), leaderboard_frame()

    refresh.click(refresh_lists, model_b, [model_a, model_b, board])
    COMPONENTS.update(model_a=model_a, model_b=model_b, prompt=prompt, system=system, max_new=max_new)
    return refresh_lists, [model_b], [model_a, model_b, board]


# ---- preference data from votes (issue 28) -------------------------------------------------------------------------
def votes_plan_text(request: gr.Request = None) -> str:
    """What 'Make preference data from votes' would use and leave out, as text (a person's own votes in a shared
    studio)."""
    line = feedback.votes_summary(voter=feedback.votes_scope(user_of(request)))
    return md_text(line) + ("" if feedback.votes_scope(user_of(request)) is None else " _(your votes)_")


def make_preference_data(request: gr.Request = None) -> str:
    """The button: the votes (the requester's own in a shared studio) as a preference dataset; says its id."""
    user = user_of(request)
    try:
        result = feedback.preference_from_votes(voter=feedback.votes_scope(user), owner=user)
    except DatasetError as exc:
        return f"**{md_text(exc)}**"
    return md_text(result.message)


def preference_box():
    """An accordion under the leaderboard: the votes' preference pairs, made into a dataset with one button.
    Returns the Markdown that describes what it would use (refreshed after each vote)."""
    with gr.Accordion("Preference data from votes (for DPO / ORPO)", open=False) as box:
        gr.Markdown("Each vote for one answer becomes a pair: chosen = the winner's answer, rejected = the other, "
                    "with the prompt, system prompt and earlier turns. Ties and \"both bad\" are left out; votes that "
                    "disagree on a pair are settled by majority. The dataset appears in the **Data** tab.")
        plan = gr.Markdown(elem_id="pg-pref-plan")
        make = gr.Button("Make preference data from votes", elem_id="pg-pref-make")
        made = gr.Markdown(elem_id="pg-pref-made")
    box.expand(votes_plan_text, None, plan)
    make.click(make_preference_data, None, made).then(votes_plan_text, None, plan)
    return plan


def _respond(request: gr.Request, *values):  # the request first: gradio injects only positional special args
    yield from respond(*values, user=user_of(request))


def _voter(winner: str):
    def handler(state, request: gr.Request):
        return vote(winner, state, request)

    return handler
