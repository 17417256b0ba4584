"""Small shared helpers for the tabs: theme, formatting, turning exceptions into messages a person can act on."""
from __future__ import annotations

import hashlib
import html
import math
import os
import re

import gradio as gr

from core import access
from core.config import in_space, positive_int_env, space_id
from core.space import hf_owner, oauth_enabled
from core.users import accounts_configured

THEME = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")
CSS = """
.fts-progress {height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; margin: 4px 0 2px 0;}
.fts-progress > div {height: 100%; background: #6366f1; transition: width .5s;}
.fts-status {font-size: 0.92em; color: #374151;}
.fts-error {color: #b91c1c; white-space: pre-wrap; font-family: monospace; font-size: 0.85em;}
.fts-lineage {white-space: pre-wrap; font-family: monospace; font-size: 0.8em; margin: 0;}
.fts-sample {white-space: pre-wrap; overflow-wrap: anywhere; font-family: monospace; font-size: 0.85em;}
#train-runs table, #train-runs .virtual-body {font-size: 0.8em;}
#train-runs span.text, #train-runs span.header, #train-runs .cell-wrap {word-break: keep-all; overflow-wrap: normal;
                                                                        hyphens: none;}
#train-runs .body-cell:nth-child(2) span.text, #train-runs .body-cell:last-child span.text {overflow-wrap: anywhere;}
#train-runs th .cell-menu-button {display: none;}
#train-jobs-note, #train-jobs-note p {font-size: 0.85em; color: #6b7280; margin: 0;}
"""

# Gradio 6.31's status tracker announces a finished event to screen readers as i18n("common.complete"), a key its
# English locale lacks (so "common.complete" was read out): the word it means
I18N = gr.I18n(en={"common.complete": "Done"})


# what makes a link, an image, code or a table cell: escaped. Emphasis (*, _) only formats and stays readable.
_MD_SPECIALS = re.compile(r"([\\`\[\]|])")


def md_text(text, limit: int | None = None) -> str:
    """Untrusted text (a dataset or run name, a row, a model's answer) placed inside Markdown: HTML escaped, the
    Markdown syntax that makes links, images, code and table cells neutralised, one line. Shown as the text it is."""
    s = " ".join(str(text if text is not None else "").split())
    if limit is not None and len(s) > limit:
        s = s[:limit] + "…"
    return _MD_SPECIALS.sub(r"\\\1", html.escape(s, quote=False))


def several_users() -> bool:
    """A studio with accounts, or a Space: people are told apart, lists show whose rows are whose."""
    return accounts_configured() or in_space()


def signed_in_name(request) -> str:
    """The account behind a request (Gradio's login, ``FTS_AUTH``); '' for an anonymous visitor."""
    return str(getattr(request, "username", None) or "")


def _oauth_info(request) -> dict | None:
    """The Hugging Face sign-in (gr.LoginButton) in the request's session, as Gradio's OAuth routes stored it;
    None when not signed in, expired, or the studio does not use it (core.space.oauth_enabled)."""
    if request is None or not oauth_enabled():
        return None
    from gradio.helpers import _session_from_request
    from gradio.oauth import _get_valid_oauth_info_from_session

    try:
        info = _get_valid_oauth_info_from_session(_session_from_request(request))
    except Exception:  # noqa: BLE001 - a session Gradio cannot read is no sign-in
        return None
    return info if isinstance(info, dict) else None


def hf_account(request) -> str:
    """The Hugging Face username a Space visitor signed in with, '' when none."""
    info = _oauth_info(request) or {}
    user = (info.get("userinfo") or {}).get("preferred_username")
    return str(user) if hf_owner(user) else ""


def visitor_hub_token(request) -> tuple[str | None, str]:
    """(the signed-in visitor's own OAuth access token, its scope) for their Hub push, (None, '') when not signed in.
    Handed to the Hub client only: never stored, logged or shown."""
    info = _oauth_info(request) or {}
    token = info.get("access_token")
    return (str(token), str(info.get("scope") or "")) if token and hf_account(request) else (None, "")


def signed_in_line(request: gr.Request) -> str:
    """Who the page takes a Space visitor for, under the sign-in button."""
    hf = hf_account(request)
    if hf:
        return (f"Signed in with Hugging Face as **{md_text(hf)}**: your runs, datasets and deployments are yours on "
                "any device, and a Hub push (Deploy → Export → hub) uses your own token.")
    return ("Not signed in: you are an anonymous visitor (known by a hash of your address). Sign in with Hugging "
            "Face to keep your runs under your account and push them to the Hub.")


def visitor_id(request) -> str:
    """A stable id for the browser behind a Gradio request ('' outside a request): the account, the Hugging Face
    account it signed in with (``hf:<username>``), or a salted hash of the address (``x-forwarded-for`` behind the
    Spaces proxy) — the raw address is never stored."""
    if request is None:
        return ""
    name = signed_in_name(request)
    if name:
        return name
    hf = hf_account(request)
    if hf:
        return hf_owner(hf)
    headers = getattr(request, "headers", None) or {}
    forwarded = headers.get("x-forwarded-for", "") if hasattr(headers, "get") else ""
    client = getattr(getattr(request, "client", None), "host", "") or ""
    address = forwarded.split(",")[0].strip() or client
    if not address:
        return ""
    salt = os.environ.get("FTS_VISITOR_SALT") or (space_id() or "local")
    return "v-" + hashlib.sha256(f"{salt}|{address}".encode()).hexdigest()[:12]


def user_of(request) -> str:
    """Who is behind a page request: the signed-in account, a Space visitor's anonymous id, or '' (a single-user
    local studio)."""
    if request is None or not several_users():
        return ""
    return visitor_id(request)


def page_requester() -> str | None:
    """Who is behind the page event being handled right now (the account, or a Space visitor's anonymous id); None
    outside an event. ``core.access`` asks it when it checks whose upload a file is."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    return visitor_id(request) if request is not None else None


# ---- no raw exception text reaches the page ------------------------------------------------------------------------

def error_line(exc: BaseException) -> str:
    """One line a person can act on for an exception a handler did not expect; the traceback goes to the log."""
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply to read (over ~1,000 levels): send a flatter value"
    if isinstance(exc, MemoryError):
        return "there is not enough memory for this request right now: try a smaller one, or later"
    if isinstance(exc, OverflowError):
        return "a number in the input is too large"
    if isinstance(exc, UnicodeError):
        return "the input holds text that is not valid UTF-8"
    if isinstance(exc, ValueError) and type(exc).__module__.startswith(("core.", "storage")):
        first = (str(exc).strip().splitlines() or [""])[0]
        return first[:400] or type(exc).__name__
    return (f"this request could not be handled ({type(exc).__name__}); nothing was changed. The studio's log has "
            "the details")


def guard_events(blocks: gr.Blocks) -> int:
    """Every event handler of the page, wrapped once: an exception that is not already a ``gr.Error`` is logged with
    its traceback and reaches the page as one clear line (:func:`error_line`), never as raw exception text.
    Returns how many handlers were wrapped."""
    import functools
    import inspect
    import sys
    import traceback

    def report(exc: BaseException):
        if isinstance(exc, gr.Error):
            return exc
        try:
            print(f"page handler error: {type(exc).__name__}: {str(exc)[:500]}", file=sys.stderr, flush=True)
            traceback.print_exc(file=sys.stderr)
        except (OSError, ValueError, RecursionError):
            pass
        return gr.Error(error_line(exc), print_exception=False)

    def wrap(fn):
        if getattr(fn, "__fts_guarded__", False):
            return fn
        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def guarded(*args, **kwargs):
                try:
                    async for item in fn(*args, **kwargs):
                        yield item
                except Exception as exc:  # noqa: BLE001 - turned into one line for the page
                    raise report(exc) from None
        elif inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def guarded(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - turned into one line for the page
                    raise report(exc) from None
        elif inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def guarded(*args, **kwargs):
                try:
                    return await fn(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - turned into one line for the page
                    raise report(exc) from None
        else:
            @functools.wraps(fn)
            def guarded(*args, **kwargs):
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - turned into one line for the page
                    raise report(exc) from None
        guarded.__fts_guarded__ = True
        return guarded

    n = 0
    for block_fn in blocks.fns.values():
        if callable(getattr(block_fn, "fn", None)):
            block_fn.fn = wrap(block_fn.fn)
            n += 1
    return n


class FairShare:
    """Generation a person asks for in the page's own process (the Playground): in a shared studio at most
    ``FTS_GENERATIONS_PER_USER`` (1) at a time per person. A request beyond that is answered at once — it never
    waits holding one of the queue's few slots — so fifty clicks from one person cannot make everyone else wait."""

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self._active: dict[str, int] = {}

    @staticmethod
    def per_user() -> int:
        return positive_int_env("FTS_GENERATIONS_PER_USER", 1)

    def try_take(self, who: str) -> bool:
        if not access.shared_mode():
            who = "\0local"  # one person: counted, never refused
            with self._lock:
                self._active[who] = self._active.get(who, 0) + 1
            return True
        with self._lock:
            if self._active.get(who, 0) >= self.per_user():
                return False
            self._active[who] = self._active.get(who, 0) + 1
            return True

    def release(self, who: str) -> None:
        who = who if access.shared_mode() else "\0local"
        with self._lock:
            n = self._active.get(who, 0) - 1
            if n > 0:
                self._active[who] = n
            else:
                self._active.pop(who, None)


GENERATION_SHARE = FairShare()


def if_changed(cache: dict, name: str, value, signature=None):
    """``value`` when the page has not been sent it yet (by its signature, or the value itself), else a no-op
    update. What was sent is noted in ``cache["sent"]``: the page's own state (the Train tab's metrics cache, which
    starts afresh for another run or attempt; the quick-start panel's cache)."""
    sent = cache.setdefault("sent", {})
    key = value if signature is None else signature
    if name in sent and sent[name] == key:
        return gr.update()
    sent[name] = key
    return value


def _polling_timers(block) -> list[gr.Timer]:
    """The timers under ``block`` that tick from the start (a timer built inactive is switched by its own section)."""
    found = []
    for child in getattr(block, "children", None) or []:
        if isinstance(child, gr.Timer):
            if child.active:
                found.append(child)
        else:
            found.extend(_polling_timers(child))
    return found


def poll_the_open_tab_only(tab_items: dict, selected: str) -> dict[str, list[gr.Timer]]:
    """A page polls for the tab it shows, not for all six: each tab's refresh timers tick only while that tab is
    selected (Gradio fires a tab's ``select`` when a person opens it, when a handler switches to it, and for the
    first tab when the page loads). An idle page ticked 4 times a second for every tab, ~0.35 of a core between its
    browser and the app. Returns tab → its timers."""
    timers = {tab: _polling_timers(item) for tab, item in tab_items.items()}
    every = [t for ts in timers.values() for t in ts]
    if not every:
        return timers
    for tab, ts in timers.items():
        for t in ts:
            t.active = tab == selected

    for tab, item in tab_items.items():
        item.select(_switch_timers([t in timers[tab] for t in every]), None, every, js=True, show_progress="hidden")
    return timers


def _switch_timers(flags: list[bool]):
    """An event that sets each timer's ``active`` to its flag, in the browser: Gradio runs a function's
    ``__js_implementation__`` there, with no request. The switch must not be a server round trip: the first tab's
    ``select`` fires at page load, and when a person (or a test) opens another tab at once, the two replies could come
    back in either order, and the load's one left the shown tab's timers off (a deployment that stayed 'starting'
    on the page for good)."""
    def switch():
        return [gr.Timer(active=f) for f in flags]

    updates = ", ".join('{"active": %s, "__type__": "update"}' % ("true" if f else "false") for f in flags)
    switch.__js_implementation__ = f"function () {{ return [{updates}]; }}"
    return switch


def mine_box(label: str, elem_id: str) -> gr.Checkbox:
    """The 'Only mine' filter of a list, shown where several people share the studio."""
    return gr.Checkbox(False, label=label, visible=several_users(), elem_id=elem_id)


def owner_filter(mine: bool, request) -> str | None:
    """An 'Only mine' box: ticked, the name lists keep (the signed-in user; '' in a single-user studio, where
    everything is the user's); unticked, None (everyone's)."""
    return user_of(request) if mine else None


def is_mine(owner: str | None, who: str | None) -> bool:
    """Does a row made by ``owner`` pass the filter ``who`` (from :func:`owner_filter`)? Deployments record a
    single-user studio's starter as 'anonymous'."""
    return who is None or ("" if owner in (None, "anonymous") else owner) == who


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def now_hms() -> str:
    """The time of an event a message reports (a run started, stopped …), as the page shows it: 14:03:59."""
    import time

    return time.strftime("%H:%M:%S")


def fmt_num(v: float | None, fmt: str = "{:.4f}") -> str:
    return "-" if v is None else fmt.format(v)


def fmt_splits(splits: dict | None) -> str:
    """A dataset's split sizes the way a person reads them: '144 train / 16 validation' (empty splits left out)."""
    parts = [f"{int(n):,} {name}" for name, n in (splits or {}).items() if n]
    return " / ".join(parts) or "no rows"


def progress_html(step: int, max_steps: int, status: str, eta_s: float | None, tokens_per_s: float | None) -> str:
    frac = (step / max_steps) if max_steps else (1.0 if status == "succeeded" else 0.0)
    pct = max(0.0, min(1.0, frac)) * 100
    bits = [f"<b>{html.escape(status)}</b>", f"step {step}/{max_steps or '?'}", f"{pct:.0f}%"]
    if status in ("running", "stopping") and eta_s is not None:
        bits.append(f"ETA {fmt_duration(eta_s)}")
    if tokens_per_s:
        bits.append(f"{tokens_per_s:,.0f} tokens/s")
    return (f'<div class="fts-progress"><div style="width:{pct:.1f}%"></div></div>'
            f'<div class="fts-status">{" · ".join(bits)}</div>')


def job_progress(job_id: str | None, outcome=None) -> str:
    """A job's progress bar and status line (evaluate and export jobs), then what it ended with: ``outcome(job)``'s
    HTML where given and not empty, else the first line of a failed job's error. "" for no job (or one gone)."""
    from core import runs
    from core.runs import JobError, RunStatus

    if not job_id:
        return ""
    try:
        job = runs.get_run(int(job_id))
    except (JobError, ValueError):
        return ""
    text = progress_html(job.step, job.max_steps, job.status.value, job.eta_s, None)
    ending = outcome(job) if outcome else ""
    if not ending and job.status == RunStatus.failed and job.error:
        ending = f'<div class="fts-error">{html.escape(job.error.splitlines()[0])}</div>'
    return text + ending


def on_processes(n, current):
    """A processes box's change (Train form, Estimate tab): more than one process needs a strategy (ddp unless fsdp
    was chosen); one process has none. The strategy is a radio: an update to a dropdown that the Tab key has just
    focused is lost."""
    try:
        n = int(n or 1)
    except (TypeError, ValueError):
        return gr.update()
    if n > 1 and current == "none":
        return gr.update(value="ddp")
    if n <= 1 and current != "none":
        return gr.update(value="none")
    return gr.update()
