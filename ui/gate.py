"""The page's gate: what every HTTP request to the dashboard passes before Gradio sees it (issue 25).

One ASGI middleware (``app.py`` hands it to Gradio's FastAPI app) that owns what Gradio's own login and file routes
leave open in a shared studio:

* **Sign-in throttling.** Failed sign-ins are counted per account and per address; after
  ``FTS_LOGIN_FAILURES_ACCOUNT`` (5) failures for an account, or ``FTS_LOGIN_FAILURES_ADDRESS`` (20) from one
  address, within ``LOGIN_WINDOW_S``, further attempts get **429** with ``Retry-After`` — a delay that doubles with
  every further failure (2 s, 4 s, … at most 15 minutes) — *before* any password is hashed. A success clears the
  account's count. The address is the client uvicorn reports (behind a proxy listed in ``FORWARDED_ALLOW_IPS``,
  the ``X-Forwarded-For`` it sets).
* **Password hashing off the event loop** (:func:`async_auth`): PBKDF2 runs in a worker thread, one at a time, so a
  burst of sign-ins cannot starve other people's requests.
* **Sessions that end**: each session remembers when it signed in and the account's password stamp
  (``core.users.account_stamp``); on every request it is ended when the account was removed, its password changed,
  or it is older than ``FTS_SESSION_HOURS`` (12). Behind TLS (the request's scheme is https, as uvicorn sets it from
  a trusted proxy's ``X-Forwarded-Proto``) only Gradio's ``Secure`` cookie is set.
* **Uploads belong to their uploader**: each upload's path is recorded with who uploaded it (``core.access``); the
  file route serves a recorded upload to its uploader only, and the resolver accepts it as a data source for its
  uploader only.

Locally (no accounts, loopback) nothing here changes what a request does.
"""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
from pathlib import Path

LOGIN_WINDOW_S = 15 * 60.0
BASE_DELAY_S = 2.0
MAX_DELAY_S = 15 * 60.0


def _int_env(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


class SignInThrottle:
    """Failure counts per key (``user:NAME`` and ``addr:IP``) in a sliding window, with a doubling delay."""

    def __init__(self, *, per_account: int | None = None, per_address: int | None = None,
                 window_s: float = LOGIN_WINDOW_S, clock=time.monotonic):
        self.per_account = per_account or _int_env("FTS_LOGIN_FAILURES_ACCOUNT", 5)
        self.per_address = per_address or _int_env("FTS_LOGIN_FAILURES_ADDRESS", 20)
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, name: str, address: str) -> float:
        """Seconds to wait before another attempt for this account from this address (0: go ahead)."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key, allowed in ((f"user:{name.lower()}", self.per_account), (f"addr:{address}", self.per_address)):
                times = self._recent(key, now)
                if len(times) >= allowed:
                    delay = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (len(times) - allowed))
                    wait = max(wait, times[-1] + delay - now)
        return max(0.0, wait)

    def failed(self, name: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            for key in (f"user:{name.lower()}", f"addr:{address}"):
                self._recent(key, now)
                self._failures.setdefault(key, []).append(now)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{name.lower()}", None)


_hash_lock = None


async def async_auth(username: str, password: str) -> bool:
    """Gradio's ``auth`` callable: the salted-hash check (core.users) in a worker thread, one at a time."""
    import anyio

    from core.users import check_password

    global _hash_lock
    if _hash_lock is None:
        _hash_lock = anyio.CapacityLimiter(1)
    return await anyio.to_thread.run_sync(check_password, username, password, limiter=_hash_lock)


def session_hours() -> float:
    try:
        return max(0.01, float(os.environ.get("FTS_SESSION_HOURS", "12")))
    except ValueError:
        return 12.0


class Sessions:
    """token -> (account, signed-in time, password stamp)."""

    def __init__(self):
        self._items: dict[str, tuple[str, float, str | None]] = {}
        self._lock = threading.Lock()

    def add(self, token: str, name: str) -> None:
        from core.users import account_stamp

        with self._lock:
            self._items[token] = (name, time.time(), account_stamp(name))

    def still_valid(self, token: str, name: str) -> bool:
        from core.users import account_stamp

        with self._lock:
            item = self._items.get(token)
        if item is None:  # a session this gate did not see start (none should exist): refuse it
            return False
        owner, started, stamp = item
        if owner != name or time.time() - started > session_hours() * 3600:
            return False
        current = account_stamp(name)
        return current is not None and current == stamp

    def drop(self, token: str) -> None:
        with self._lock:
            self._items.pop(token, None)


def _cookies(scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in scope.get("headers") or []:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                name, _, val = part.strip().partition("=")
                if name:
                    out[name] = val
    return out


def _client(scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def requester_of(scope, username: str | None) -> str:
    """Who is behind a request, as ``ui.common.visitor_id`` names a Gradio request: the account, or a salted hash
    of the address."""
    from starlette.requests import Request

    from ui.common import visitor_id

    if username:
        return username
    return visitor_id(Request(scope))


class Gate:
    """The ASGI middleware (see the module's docstring)."""

    def __init__(self, app, throttle: SignInThrottle | None = None):
        self.app = app
        self.throttle = throttle or SignInThrottle()
        self.sessions = Sessions()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        gradio_app = scope.get("app")
        tokens = getattr(gradio_app, "tokens", None)
        username = self._session_user(scope, gradio_app, tokens)
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        if method == "POST" and path.rstrip("/").endswith("/login"):
            return await self._login(scope, receive, send, gradio_app)
        if path.startswith(("/gradio_api/file=", "/gradio_api/file/")):
            denied = self._file_denied(scope, path, username)
            if denied:
                return await _plain(send, 403, denied)
        if method == "POST" and path.rstrip("/") == "/gradio_api/upload":
            return await self._upload(scope, receive, send, requester_of(scope, username))
        return await self.app(scope, receive, send)

    # ---- sessions ------------------------------------------------------------------------------------------------
    def _session_user(self, scope, gradio_app, tokens) -> str | None:
        if not tokens:
            return None
        cookie_id = getattr(gradio_app, "cookie_id", "")
        cookies = _cookies(scope)
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
        if not token or token not in tokens:
            return None
        name = tokens[token]
        if self.sessions.still_valid(token, name):
            return name
        tokens.pop(token, None)  # Gradio now sees no session: the page asks for a login, the API answers 401
        self.sessions.drop(token)
        return None

    # ---- sign-in ---------------------------------------------------------------------------------------------------
    async def _login(self, scope, receive, send, gradio_app):
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > 64 * 1024:
                return await _plain(send, 413, "sign-in form too large")
        name = await _form_username(scope, body)
        address = _client(scope)
        wait = self.throttle.retry_after(name, address)
        if wait > 0:
            seconds = int(wait) + 1
            return await _json(send, 429, {"detail": f"Too many failed sign-ins: try again in {seconds} s."},
                               extra=[(b"retry-after", str(seconds).encode())])
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        secure = scope.get("scheme") == "https"
        cookie_id = getattr(gradio_app, "cookie_id", "")
        state = {"status": 0}

        async def watch(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = []
                for key, value in message.get("headers", []):
                    if key.lower() == b"set-cookie":
                        text = value.decode("latin-1")
                        if text.startswith(f"access-token-{cookie_id}="):
                            token = text.split("=", 1)[1].split(";", 1)[0]
                            self.sessions.add(token, name)
                        if secure and text.startswith("access-token-unsecure-"):
                            continue  # behind TLS: only the Secure cookie
                    headers.append((key, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, replay, watch)
        if state["status"] == 200:
            self.throttle.succeeded(name)
        elif state["status"] in (400, 401):
            self.throttle.failed(name, address)

    # ---- uploads ---------------------------------------------------------------------------------------------------
    async def _upload(self, scope, receive, send, who: str):
        from core.access import record_upload

        chunks: list[bytes] = []
        state = {"status": 0}

        async def watch(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body" and state["status"] == 200:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    try:
                        paths = json.loads(b"".join(chunks).decode("utf-8"))
                    except ValueError:
                        paths = []
                    for p in paths if isinstance(paths, list) else []:
                        if isinstance(p, str):
                            record_upload(p, who)
            await send(message)

        await self.app(scope, receive, watch)

    def _file_denied(self, scope, path: str, username: str | None) -> str | None:
        from core.access import shared_mode, upload_dir, upload_owner

        raw = path.split("=", 1)[1] if path.startswith("/gradio_api/file=") else path[len("/gradio_api/file/"):]
        raw = urllib.parse.unquote(raw)
        if not raw or not shared_mode():
            return None
        try:
            real = Path(raw if raw.startswith("/") else "/" + raw).resolve()
        except (OSError, RuntimeError, ValueError):
            return "not found"
        if not real.is_relative_to(upload_dir()):
            return None  # Gradio's own rules decide (it refuses files outside its folders)
        owner = upload_owner(real)
        if owner is not None and owner != requester_of(scope, username):
            return "this upload belongs to someone else"
        return None


async def _form_username(scope, body: bytes) -> str:
    """The ``username`` of a sign-in form (urlencoded, as the API sends it, or multipart, as the page does)."""
    from starlette.requests import Request

    async def once():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, once).form()
        return str(form.get("username") or "").strip()
    except Exception:  # noqa: BLE001 - a malformed form: Gradio refuses it; count it under no name
        return ""


async def _plain(send, status: int, text: str):
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send, status: int, obj, extra=()):
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})
