"""The one resolver for every server location a page user can name (issues 15 and 25).

A studio is *shared* when strangers can reach it: it runs as a Space (``SPACE_ID``), has accounts (a users file,
core.users) or a password (``FTS_AUTH``), binds to a non-loopback address (``GRADIO_SERVER_NAME``), or
``FTS_SHARED=1`` says so. In the process that serves the page (``serve_page()``, called when the page is built) every
reference that may name a place on the server's disk — a dataset file, ``hub:`` + anything, ``file://``, a model /
tokenizer / base / template / adapter folder, the base an adapter's ``adapter_config.json`` names — goes through
:func:`locate` before any library sees the string. In a shared studio it is

* a **Hub id** only when it has the Hub's shape (``owner/name`` or ``name``) and does not name something in the
  working directory, so the library that receives it goes to the Hub, never to the disk;
* otherwise a **path**: ``~``, ``..`` and symlinks resolved, then accepted only inside ``FTS_DATA_ROOTS``, the runs'
  folders, the converted models, or the requester's *own* uploads (Gradio's upload folder holds everyone's); and
* refused, with one line, when it is neither — whether the place exists or not (the answer is the same, so nothing
  is revealed about the disk).

``core.models.resolve_model`` and ``core.data.prepare.read_source`` are the two doors every model and data
reference passes through, and both call :func:`locate`, so a field added to a tab later is covered without a
check of its own. The CLI, the job workers and the host's own start-up code are the host's: they never call
``serve_page()`` (or run inside :func:`trusted`) and are not restricted. Locally (loopback, no accounts) paths work
as they always did; :func:`locate` still refuses what no studio can use (NUL bytes, over-long references, URLs).
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}
MAX_REF_CHARS = 1024
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}(/[A-Za-z0-9_][\w.\-]{0,95})?$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]{1,15}):")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")


class PathNotAllowed(ValueError):
    """A reference a browser user may not use here; the message says what to do instead."""


def shared_mode() -> bool:
    if os.environ.get("FTS_SHARED", "").strip() in ("1", "true", "yes"):
        return True
    if os.environ.get("SPACE_ID") or os.environ.get("FTS_AUTH"):
        return True
    from core.users import accounts_configured

    if accounts_configured():  # named users: a team's studio
        return True
    return os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1").strip() not in LOOPBACK


def mode_line() -> str:
    return ("shared mode: server paths only under FTS_DATA_ROOTS" if shared_mode() else
            "local mode: server paths allowed")


# ---- who is asking -------------------------------------------------------------------------------------------------

_page_process = False
_trusted: ContextVar[bool] = ContextVar("fts_trusted", default=False)
_requester: Callable[[], str | None] | None = None


def serve_page(requester: Callable[[], str | None] | None = None) -> None:
    """This process serves the page: from now on what reaches the resolver here is a page user's, checked in a
    shared studio. ``requester`` tells who is behind the event being handled (the UI layer knows; core does not)."""
    global _page_process, _requester
    _page_process = True
    if requester is not None:
        _requester = requester


@contextlib.contextmanager
def trusted() -> Iterator[None]:
    """The host's own code in the page's process (start-up, the quick start's built-in demo): not a page user."""
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


def in_page() -> bool:
    """Whether what is being resolved here and now comes from a page user (this process serves the page, and the
    code running is not the host's own)."""
    return _page_process and not _trusted.get()


def checking() -> bool:
    """Whether references are checked against the roots here and now."""
    return in_page() and shared_mode()


def current_requester() -> str | None:
    """The page user behind the event being handled ('' or None: nobody known)."""
    if _requester is None:
        return None
    try:
        return _requester()
    except Exception:  # noqa: BLE001 - no request in this context
        return None


# ---- uploads belong to their uploader ------------------------------------------------------------------------------

_uploads: dict[str, str] = {}
_uploads_lock = threading.Lock()


def upload_dir() -> Path:
    return Path(os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")).resolve()


def record_upload(path: str, owner: str) -> None:
    """Gradio stored an upload of ``owner``'s at ``path`` (called by the page's upload route)."""
    with _uploads_lock:
        _uploads[str(Path(path).resolve())] = owner or ""


def upload_owner(path: str | Path) -> str | None:
    """Who uploaded the file at ``path`` (the file itself or the folder Gradio made for it); None: not an upload
    this process saw."""
    real = str(Path(path).resolve())
    with _uploads_lock:
        if real in _uploads:
            return _uploads[real]
        for p, owner in _uploads.items():  # a folder Gradio made for one upload
            if p.startswith(real.rstrip("/") + "/"):
                return owner
    return None


# ---- the resolver --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Location:
    kind: str  # "hub" (a Hub id, to be fetched from the Hub) | "path" (a resolved absolute path on this machine)
    value: str
    ref: str  # what was typed

    @property
    def path(self) -> Path:
        return Path(self.value)


def allowed_roots() -> list[Path]:
    """The folders a shared studio lets users read: ``FTS_DATA_ROOTS``, the runs' folders and the converted models
    (uploads are checked per uploader, see :func:`locate`)."""
    from core.config import get_settings

    roots = [Path(p).expanduser().resolve() for p in os.environ.get("FTS_DATA_ROOTS", "").split(os.pathsep)
             if p.strip()]
    settings = get_settings()  # the runs' adapters and the converted models; not the workspace's own files (the DB)
    roots += [settings.runs_dir.resolve(), settings.models_dir.resolve()]
    return roots


def clean_ref(ref, what: str) -> str:
    """A reference as text, or PathNotAllowed: not text, empty after trimming is returned as '', NUL / control
    characters and over-long references are refused in one line."""
    if ref is None:
        return ""
    if not isinstance(ref, str):
        raise PathNotAllowed(f"{what} must be text (got {type(ref).__name__})")
    text = ref.strip()
    if len(text) > MAX_REF_CHARS:
        raise PathNotAllowed(f"{what} is {len(text):,} characters long; a model, dataset or folder reference is at "
                             f"most {MAX_REF_CHARS:,}")
    if _CONTROL.search(text):
        raise PathNotAllowed(f"{what} contains control characters (NUL, escape, …): type a Hub id or a path")
    return text


def is_hub_id(text: str) -> bool:
    """The Hub's shape (``owner/name`` or ``name``), nothing else: no ``..``, no leading dot or slash."""
    return bool(HUB_ID.match(text)) and ".." not in text and not text.endswith(".")


def _names_local(text: str) -> bool:
    """Whether a Hub-shaped reference would be read from the working directory by the libraries (they look on disk
    before the Hub). Judged by its first part, which is the repository's own public layout."""
    first = text.split("/", 1)[0]
    try:
        return Path(first).exists()
    except OSError:
        return False


def locate(ref, what: str = "the reference", *, hub: bool = True) -> Location:
    """Resolve a reference a person typed into a Hub id or a path on this machine, or refuse it in one line.

    ``hub=False``: a Hub id is not accepted here (a folder is required). In a shared studio's page process the path
    must be inside the allowed roots (or the requester's own upload); the refusal is the same whether it exists."""
    text = clean_ref(ref, what)
    if not text:
        raise PathNotAllowed(f"{what} is empty")
    scheme = _SCHEME.match(text)
    if scheme and len(scheme.group(1)) > 1:  # not a Windows drive letter
        name = scheme.group(1).lower()
        rest = text[len(scheme.group(0)):]
        if name == "hub":
            rest = rest.strip()
            if not is_hub_id(rest):
                raise PathNotAllowed(f"{what} 'hub:{_short(rest)}' is not a Hub id: after 'hub:' comes owner/name, "
                                     "e.g. hub:tatsu-lab/alpaca")
            if checking() and _names_local(rest):
                raise PathNotAllowed(_local_name_message(what, rest))
            return Location("hub", rest, text)
        if name == "file":
            text = rest[2:] if rest.startswith("//") else rest
            if not text:
                raise PathNotAllowed(f"{what} 'file:' names no file")
        else:
            raise PathNotAllowed(f"{what} '{_short(text)}' is a URL ({name}:); the studio reads uploads, Hub ids and "
                                 "folders on this machine, not URLs: download the file and upload it")
    elif hub and is_hub_id(text) and not _names_local(text):
        return Location("hub", text, text)
    # a path (a Hub-shaped name whose first part is in the working directory is one too: the libraries read it
    # from the disk before they would ask the Hub)
    try:
        real = Path(text).expanduser().resolve(strict=False)
    except (OSError, RuntimeError, ValueError) as exc:
        raise PathNotAllowed(f"{what} '{_short(text)}' cannot be resolved ({type(exc).__name__})") from None
    if checking():
        _check_path(real, text, what)
    return Location("path", str(real), text)


def _short(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[:n] + "…"


def _local_name_message(what: str, text: str) -> str:
    return (f"{what} '{_short(text)}' names a folder of the studio's own installation, not a Hub id: this shared "
            "studio reads Hub ids from the Hub and files only from uploads and FTS_DATA_ROOTS")


def _inside_roots(real: Path) -> bool:
    real = real.resolve()
    return any(real == root or real.is_relative_to(root) for root in allowed_roots())


def _check_path(real: Path, typed: str, what: str) -> None:
    uploads = upload_dir()
    if real == uploads or real.is_relative_to(uploads):
        owner = upload_owner(real)
        me = current_requester()
        if owner is not None and me is not None and owner == me:
            return
        raise PathNotAllowed(f"{what} '{_short(typed)}' is not one of your uploads: upload the file yourself")
    if _inside_roots(real):
        return
    configured = os.environ.get("FTS_DATA_ROOTS", "").strip()
    raise PathNotAllowed(
        f"{what} '{_short(typed)}' is a path on the server outside the folders this shared studio may read "
        f"({'FTS_DATA_ROOTS: ' + configured if configured else 'FTS_DATA_ROOTS is empty'}): upload the file, use a "
        "Hub id, or ask the admin to add its folder to FTS_DATA_ROOTS")


def check_user_path(ref: str | None, what: str) -> str | None:
    """``ref`` unchanged when a page user may use it here (Hub ids, ``default``, dataset ids and run references pass);
    PathNotAllowed otherwise. A thin form of :func:`locate` for fields that hold either a name or a path."""
    if ref is None:
        return None
    text = clean_ref(ref, what)
    if not text or text.lower() == "default" or text.isdigit() or re.match(r"^(run|deployment):\s*#?\d+$", text, re.I):
        return ref
    locate(text, what)
    return ref
