"""Secrets stay secret (issue 15): a token the studio holds — ``HF_TOKEN`` and the other token variables of its
environment, the Hugging Face token file — never reaches the database, a run's files, a log or the page.

The studio never writes them on purpose (containers get ``-e HF_TOKEN`` by name, the Hub check sends the token in a
header and reports only status codes). This module is the net under that: :func:`redact` replaces every known token
value, and anything shaped like a Hugging Face token (``hf_`` + 16 or more letters and digits), with ``hf_***``. It
is applied where text leaves a process — a job's error, its stdout/stderr (the worker log), a deployment's error, every
log tail shown on the page — so a library that echoes a server's answer (an endpoint quoting the token back in a 401)
cannot leak it either.
"""
from __future__ import annotations

import os
import re
import sys

TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_API_TOKEN", "OPENAI_API_KEY",
             "WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "FTS_JUDGE_API_KEY")
MASK = "hf_***"
# a Hub token (hf_ + letters and digits) or a Hub OAuth access token (hf_oauth_ + ...), as a visitor's sign-in gives
_HF_SHAPE = re.compile(r"hf_(?:oauth_)?[A-Za-z0-9]{16,}")


def secret_values() -> list[str]:
    """The token values this process knows (environment and the Hugging Face token file), longest first."""
    values = {os.environ.get(k, "").strip() for k in TOKEN_ENV}
    try:
        from huggingface_hub.utils import get_token

        values.add((get_token() or "").strip())
    except Exception:  # noqa: BLE001, S110 - no hub library or no token file: the environment is what there is
        pass
    return sorted((v for v in values if len(v) >= 8), key=len, reverse=True)


def redact(text: str | None) -> str | None:
    if not text:
        return text
    out = str(text)
    for value in secret_values():
        if value in out:
            out = out.replace(value, MASK)
    return _HF_SHAPE.sub(MASK, out)


class RedactingStream:
    """A text stream that writes through :func:`redact` (a worker's stdout/stderr: its log)."""

    def __init__(self, stream):
        self._stream = stream
        self._values = secret_values()

    def write(self, text: str) -> int:
        out = text
        for value in self._values:
            if value in out:
                out = out.replace(value, MASK)
        self._stream.write(_HF_SHAPE.sub(MASK, out))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def install_redaction() -> None:
    """Route this process's Python-level stdout/stderr (prints, logging, tracebacks) through :func:`redact`."""
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
