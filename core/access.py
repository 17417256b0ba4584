"""What a browser user may point the studio at on the server's disk (issue 15's "server paths").

A studio is *shared* when strangers can reach it: it runs as a Space (``SPACE_ID``), has accounts (a users file,
core.users) or a password (``FTS_AUTH``), binds to a non-loopback address (``GRADIO_SERVER_NAME``), or
``FTS_SHARED=1`` says so. Then a path a user types — a dataset file, a base-model folder, an adapter, a template to
copy — is accepted only inside the folders listed in ``FTS_DATA_ROOTS`` (``os.pathsep``-separated; none by default,
so only uploads and Hub ids work), after ``~``, ``..`` and symlinks are resolved, and before anything is opened.
Uploads (Gradio's temporary folder), the runs' folders and the converted models are always readable (not the
workspace's database). Locally (loopback, no accounts) paths work as they always did.

The CLI is the host's own user and is not checked; this applies to what arrives from the page.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}


class PathNotAllowed(ValueError):
    """A server path a browser user may not use here; the message says what to do instead."""


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


def allowed_roots() -> list[Path]:
    """The folders a shared studio lets users read: ``FTS_DATA_ROOTS``, uploads and the workspace."""
    from core.config import get_settings

    roots = [Path(p).expanduser().resolve() for p in os.environ.get("FTS_DATA_ROOTS", "").split(os.pathsep)
             if p.strip()]
    gradio_tmp = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    roots.append(Path(gradio_tmp).resolve())
    settings = get_settings()  # the runs' adapters and the converted models; not the workspace's own files (the DB)
    roots += [settings.runs_dir.resolve(), settings.models_dir.resolve()]
    return roots


def looks_like_path(ref: str) -> bool:
    """A reference the studio would open on disk: absolute, ``~``, ``.``-relative, or an existing relative path."""
    text = (ref or "").strip()
    if not text:
        return False
    if text.startswith(("/", "~", "./", "../", ".\\")) or text in (".", ".."):
        return True
    try:
        return Path(text).exists()
    except OSError:
        return False


def check_user_path(ref: str | None, what: str) -> str | None:
    """``ref`` unchanged when a browser user may use it; PathNotAllowed in a shared studio for a server path outside
    the allowed roots. Hub ids, ``default``, dataset ids and run references pass."""
    if ref is None or not shared_mode() or not looks_like_path(str(ref)):
        return ref
    try:
        real = Path(str(ref).strip()).expanduser().resolve(strict=False)
    except (OSError, RuntimeError) as exc:
        raise PathNotAllowed(f"{what} '{ref}' cannot be resolved ({exc})") from None
    for root in allowed_roots():
        if real == root or real.is_relative_to(root):
            return ref
    configured = os.environ.get("FTS_DATA_ROOTS", "").strip()
    raise PathNotAllowed(
        f"{what} '{ref}' is a path on the server outside the folders this shared studio may read "
        f"({'FTS_DATA_ROOTS: ' + configured if configured else 'FTS_DATA_ROOTS is empty'}): upload the file, use a "
        "Hub id, or ask the admin to add its folder to FTS_DATA_ROOTS")
