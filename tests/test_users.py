"""Named users (issue 12): accounts as salted hashes, who may change a run, and two people in one browser."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from core.config import REPO_ROOT
from core.users import (
    NotAllowed,
    UserError,
    accounts_configured,
    add_user,
    can_manage,
    check_can_manage,
    check_password,
    list_users,
    remove_user,
    users_file,
)
from tests.pages import start_training_from_the_tab


@pytest.fixture
def users(workspace, monkeypatch):
    monkeypatch.delenv("FTS_AUTH", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("FTS_USERS_FILE", str(workspace / "users.json"))
    return workspace / "users.json"


def test_accounts_are_salted_hashes_and_checked_in_constant_time(users):
    assert not accounts_configured() and can_manage("alice", "bob")  # no accounts: a single-user studio
    add_user("alice", "correct horse battery")
    add_user("bob", "tr0ub4dor&3xyz", admin=True)
    raw = users.read_text()
    assert "correct horse" not in raw and "tr0ub4dor" not in raw
    data = json.loads(raw)["users"]
    assert data["alice"]["salt"] != data["bob"]["salt"] and len(data["alice"]["hash"]) == 64
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600
    assert check_password("alice", "correct horse battery")
    assert not check_password("alice", "correct horse batter")
    assert not check_password("mallory", "correct horse battery")  # unknown: refused, same work, nothing revealed
    assert [u["name"] for u in list_users()] == ["alice", "bob"]
    for bad_name in ("", "v-visitor", "../etc", "a b"):
        with pytest.raises(UserError):
            add_user(bad_name, "long enough password")
    with pytest.raises(UserError, match="at least 8"):
        add_user("carol", "short")
    remove_user("bob")
    assert [u["name"] for u in list_users()] == ["alice"]


def test_only_the_owner_or_an_admin_may_change_a_run(users):
    from core import runs

    add_user("alice", "alice-password")
    add_user("bob", "bob-password")
    add_user("root", "admin-password", admin=True)
    job = runs.submit("train", {"dataset": "x"}, start=False, owner="alice")
    check_can_manage(job, "alice", "stop")
    check_can_manage(job, "root", "stop")
    with pytest.raises(NotAllowed, match=r"run #\d+ belongs to alice: only its owner or an admin can stop it "
                                         r"\(you are bob\)"):
        check_can_manage(job, "bob", "stop")
    legacy = runs.submit("train", {"dataset": "x"}, start=False)  # made before accounts existed
    with pytest.raises(NotAllowed, match="nobody"):
        check_can_manage(legacy, "alice", "resume")


def test_the_users_command_adds_lists_and_removes(users):
    env = dict(os.environ)

    def cli(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "core", "users", *args], cwd=REPO_ROOT, env=env, input=stdin,
                              capture_output=True, text=True, timeout=120)

    out = cli("add", "dana", "--admin", "--password-stdin", stdin="a-long-passphrase\n")
    assert out.returncode == 0 and "dana" in out.stdout and "(admin)" in out.stdout, out.stderr
    assert check_password("dana", "a-long-passphrase") and users_file() == users
    assert cli("list").stdout.strip() == "dana (admin)"
    bad = cli("add", "eve", "--password-stdin", stdin="short\n")
    assert bad.returncode == 2 and "at least 8" in bad.stderr
    assert cli("remove", "dana").returncode == 0 and cli("list").stdout.strip() == ""


@pytest.mark.browser
@pytest.mark.slow
def test_two_people_sign_in_see_each_others_runs_and_cannot_stop_them(users, start_app, browser, fixtures_dir):
    """Alice and Bob sign in (one Chromium, two contexts); a wrong password is refused. Alice starts a run from the
    Train tab; Bob sees it with its owner, cannot stop it, filters it away with "Only my runs"; Alice stops it."""
    from playwright.sync_api import expect

    from core import runs

    add_user("alice", "alice-password")
    add_user("bob", "bob-password")
    url = start_app(users.parent / "app-users.log", FTS_DATA_ROOTS=str(fixtures_dir))  # a shared studio

    def sign_in(name, password):
        page = browser.new_context(viewport={"width": 1500, "height": 1300}).new_page()
        page.goto(url)
        page.get_by_label("username").fill(name)
        page.get_by_label("password").fill(password)
        page.get_by_role("button", name="Login").click()
        return page

    intruder = sign_in("alice", "wrong-password")
    expect(intruder.get_by_text("Incorrect Credentials", exact=False)).to_be_visible(timeout=20_000)
    expect(intruder.get_by_role("tab", name="Train", exact=True)).to_have_count(0)

    try:
        _two_people(browser, sign_in, users, fixtures_dir)
    finally:  # a run left behind by a failed assertion would go on training after the test
        for r in runs.list_runs():
            if r.status.is_active:
                runs.stop(r.id, timeout_s=5)


def _two_people(browser, sign_in, users, fixtures_dir):
    from playwright.sync_api import expect

    from core import runs

    alice = sign_in("alice", "alice-password")
    expect(alice.get_by_role("tab", name="Train", exact=True)).to_be_visible(timeout=30_000)
    expect(alice.locator("#fts-mode")).to_contain_text("shared mode")  # accounts make a team's studio
    alice.get_by_role("tab", name="Train", exact=True).click()
    start_training_from_the_tab(alice, str(fixtures_dir / "alpaca_en_demo.json"), max_steps=400, batch_size=1,
                                max_length=64)
    expect(alice.get_by_text("Run #1")).to_be_visible(timeout=60_000)
    deadline = time.time() + 300
    while runs.get_run(1).status != "running" and time.time() < deadline:
        time.sleep(0.2)
    assert runs.get_run(1).owner == "alice"

    bob = sign_in("bob", "bob-password")
    bob.get_by_role("tab", name="Train", exact=True).click()
    expect(bob.get_by_role("gridcell", name="alice", exact=True)).to_be_visible(timeout=30_000)  # owner column
    expect(bob.get_by_label("Selected run")).to_have_value("#1 run-1 — running", timeout=30_000)
    bob.get_by_role("button", name="Stop", exact=True).click()
    expect(bob.get_by_text("belongs to alice: only its owner or an admin can stop it")).to_be_visible(timeout=20_000)
    time.sleep(1.5)
    assert runs.get_run(1).status == "running"  # Bob's click changed nothing
    bob.get_by_label("Only my runs").check()
    expect(bob.get_by_role("gridcell", name="alice", exact=True)).to_have_count(0, timeout=10_000)
    bob.screenshot(path=str(users.parent / "users-bob.png"), full_page=True)

    alice.get_by_role("button", name="Stop", exact=True).click()
    expect(alice.get_by_text("Run #1 stopp")).to_be_visible(timeout=120_000)
    assert runs.wait_for(1, timeout_s=120).status == "stopped"
