"""The studio's own ``app.py``, started under a Python audit hook that records every file the process opens or lists
under ``FTS_TEST_CANARY`` into ``FTS_TEST_CANARY_LOG`` (tests only: the API-walking test's tripwire).

    FTS_TEST_CANARY=/tmp/x/canary FTS_TEST_CANARY_LOG=/tmp/x/hits.log python tests/audited_app.py
"""
from __future__ import annotations

import os
import runpy
import sys
import threading

CANARY = os.path.realpath(os.environ["FTS_TEST_CANARY"])
MARK = os.path.basename(CANARY)  # a unique folder name: checked first, so the hook costs nothing elsewhere
LOG = os.environ["FTS_TEST_CANARY_LOG"]
EVENTS = {"open", "os.listdir", "os.scandir", "os.chdir", "glob.glob", "shutil.copyfile", "shutil.copytree",
          "os.rename", "os.remove", "os.mkdir", "os.symlink"}
_busy = threading.local()


def _hook(event: str, args) -> None:
    if event not in EVENTS or getattr(_busy, "on", False) or not args:
        return
    path = args[0]
    if isinstance(path, int) or path is None:
        return
    try:
        text = os.fsdecode(path)
    except TypeError:
        return
    if MARK not in text and "~" not in text:
        return
    if CANARY not in os.path.realpath(os.path.expanduser(os.path.join(os.getcwd(), text))):
        return
    _busy.on = True
    try:
        with open(LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{event} {text}\n")
    finally:
        _busy.on = False


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # as `python app.py` from the repository has it
sys.addaudithook(_hook)
sys.argv = ["app.py"]
runpy.run_path(os.path.join(REPO, "app.py"), run_name="__main__")
