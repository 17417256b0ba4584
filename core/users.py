"""Named users (issue 12): accounts for a team's studio, and who may do what to a run.

Accounts live in a users file (``FTS_USERS_FILE``, default ``<workspace>/users.json``, mode 600) written by
``python -m core users add NAME``: a salted PBKDF2-SHA256 hash per user (240,000 iterations), never the password.
``FTS_AUTH="name:password"`` still works as one more account (an admin: it was the studio's single login).

* With no account configured the studio is a single-user tool: anyone who reaches the page may do anything.
* With accounts, the page asks for a login; every run, evaluation, export, dataset, deployment and vote records
  its user. Anyone may look at everything; only the owner of a run — or an admin — may stop, resume, continue,
  export or deploy it (:func:`check_can_manage`).
* On a Space without accounts, a visitor is an anonymous id (``ui.common.visitor_id``) and may manage only the runs
  that visitor started.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path

ITERATIONS = 240_000
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,39}$")
MIN_PASSWORD = 8


class UserError(ValueError):
    """A users-file request that cannot be done; the message says why."""


class NotAllowed(ValueError):
    """Someone asked to change a run that is not theirs; the message names the owner and who may."""


def users_file() -> Path:
    from core.config import get_settings

    raw = os.environ.get("FTS_USERS_FILE", "").strip()
    return Path(raw).expanduser() if raw else get_settings().workspace / "users.json"


_cache: dict[str, tuple[tuple, dict]] = {}


def _read() -> dict:
    """The accounts, read again only when the users file changed (the page checks a session on every request)."""
    p = users_file()
    try:
        st = p.stat()
    except OSError:
        return {}
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    hit = _cache.get(str(p))
    if hit is not None and hit[0] == key:
        return dict(hit[1])
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"the users file {p} cannot be read ({exc}); fix or remove it") from None
    users = data.get("users", {}) if isinstance(data, dict) else {}
    _cache[str(p)] = (key, users)
    return dict(users)


def _write(users: dict) -> None:
    p = users_file()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"users": users}, f, indent=1, sort_keys=True)
    os.replace(tmp, p)


def _hash(password: str, salt: bytes, iterations: int = ITERATIONS) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations).hex()


def add_user(name: str, password: str, *, admin: bool = False) -> None:
    """Add or replace an account (the password is hashed; only the hash is stored)."""
    name = (name or "").strip()
    if not NAME_RE.match(name) or name.startswith("v-"):
        raise UserError("a user name is 1-40 letters, digits, '_', '.', '@' or '-', starting with a letter or digit "
                        "(and not 'v-', which marks anonymous Space visitors)")
    if len(password or "") < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters")
    users = _read()
    salt = secrets.token_bytes(16)
    users[name] = {"salt": salt.hex(), "hash": _hash(password, salt), "iterations": ITERATIONS, "admin": bool(admin)}
    _write(users)


def remove_user(name: str) -> None:
    users = _read()
    if name not in users:
        raise UserError(f"no user '{name}' in {users_file()}")
    del users[name]
    _write(users)


def list_users() -> list[dict]:
    out = [{"name": n, "admin": bool(u.get("admin"))} for n, u in sorted(_read().items())]
    env = _env_account()
    if env and env[0] not in {u["name"] for u in out}:
        out.append({"name": env[0], "admin": True, "from": "FTS_AUTH"})
    return out


def _env_account() -> tuple[str, str] | None:
    from core.config import get_settings

    return get_settings().auth


def check_password(name: str, password: str) -> bool:
    """Constant-time check; an unknown name costs the same as a known one (nothing is revealed)."""
    name, password = name or "", password or ""
    env = _env_account()
    if env and hmac.compare_digest(name.encode(), env[0].encode()):
        return hmac.compare_digest(password.encode(), env[1].encode())
    try:
        user = _read().get(name)
    except UserError:
        user = None
    if user is None:
        _hash(password, b"\0" * 16)  # same work as a real check
        return False
    try:
        salt = bytes.fromhex(user["salt"])
        expected = user["hash"]
        iterations = int(user.get("iterations", ITERATIONS))
    except (KeyError, ValueError, TypeError):
        return False
    return hmac.compare_digest(_hash(password, salt, iterations), expected)


def account_stamp(name: str) -> str | None:
    """A short fingerprint of an account's current password (None: no such account). A session remembers the stamp
    it signed in with; a changed password or a removed account changes it, and the session ends."""
    env = _env_account()
    if env and name == env[0]:
        return hashlib.sha256(b"env|" + env[1].encode()).hexdigest()[:16]
    try:
        user = _read().get(name)
    except UserError:
        return None
    if not isinstance(user, dict) or not user.get("hash"):
        return None
    return hashlib.sha256(f"file|{user.get('salt')}|{user['hash']}".encode()).hexdigest()[:16]


def accounts_configured() -> bool:
    try:
        return bool(_env_account() or _read())
    except UserError:
        return True  # a broken users file must not open the studio to everyone


def is_admin(name: str) -> bool:
    env = _env_account()
    if env and name == env[0]:
        return True
    try:
        return bool((_read().get(name) or {}).get("admin"))
    except UserError:
        return False


def enforced() -> bool:
    """Whether ownership is checked: with accounts, or on a Space (anonymous visitors manage their own runs)."""
    from core.space import in_space

    return accounts_configured() or in_space()


def can_manage(owner: str | None, user: str | None) -> bool:
    if not enforced():
        return True
    if user and is_admin(user):
        return True
    return bool(user) and (owner or "") == user


def check_can_manage(run, user: str | None, action: str) -> None:
    """Raise NotAllowed unless ``user`` may ``action`` (stop, resume, continue, export, deploy …) ``run``."""
    if can_manage(getattr(run, "owner", ""), user):
        return
    owner = getattr(run, "owner", "") or "nobody (made before accounts existed)"
    who = user or "an anonymous visitor"
    raise NotAllowed(f"run #{run.id} belongs to {owner}: only its owner or an admin can {action} it "
                     f"(you are {who})")


# ---- python -m core users ------------------------------------------------------------------------------------------

def register_cli(subparsers) -> None:
    p = subparsers.add_parser("users", help="the studio's accounts (named users; stored as salted hashes)")
    us = p.add_subparsers(dest="users_command", required=True)
    q = us.add_parser("add", help="add or replace an account (asks for the password)")
    q.add_argument("name")
    q.add_argument("--admin", action="store_true", help="may stop, resume and deploy anyone's runs")
    q.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    q = us.add_parser("remove")
    q.add_argument("name")
    us.add_parser("list")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    import getpass
    import sys

    from core.text import fail

    try:
        if args.users_command == "add":
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass(f"password for {args.name}: ")
                if getpass.getpass("again: ") != password:
                    raise UserError("the two passwords differ")
            add_user(args.name, password, admin=args.admin)
            print(f"user {args.name} saved in {users_file()}" + (" (admin)" if args.admin else ""))
        elif args.users_command == "remove":
            remove_user(args.name)
            print(f"user {args.name} removed")
        else:
            for u in list_users():
                print(u["name"] + (" (admin)" if u["admin"] else "") + (f" [{u['from']}]" if u.get("from") else ""))
    except UserError as exc:
        return fail(exc)
    return 0
