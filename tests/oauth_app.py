"""The studio's own ``app.py`` with Gradio's local OAuth mock made to work offline (tests only).

Off a Space (no ``SYSTEM=spaces``) Gradio 6.31 mocks "Sign in with Hugging Face": ``/login/huggingface`` redirects to
``/login/callback``, which stores a profile in the signed session cookie as the real callback does
(gradio/oauth.py ``_add_mocked_oauth_routes``). The profile comes from ``_get_mocked_oauth_info()``, which asks the
Hub who this machine's token belongs to (``whoami``) — the one call that needs the Hub. Here it is given the same
dict without asking: the user ``FTS_TEST_HF_USER``, an access token ``FTS_TEST_HF_TOKEN``, scopes
``FTS_TEST_HF_SCOPE``. Everything else — the routes, the session cookie, Gradio reading it back, the studio — runs
as on a Space.

    SPACE_ID=x OAUTH_CLIENT_ID=x FTS_TEST_HF_USER=alice python tests/oauth_app.py
"""
from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

import gradio.oauth


def mocked_oauth_info() -> dict:
    user = os.environ.get("FTS_TEST_HF_USER", "alice")
    return {  # the shape gradio.oauth._get_mocked_oauth_info returns
        "access_token": os.environ.get("FTS_TEST_HF_TOKEN", "hf_oauth_" + "x" * 30),
        "token_type": "bearer", "expires_in": 3600, "id_token": "A" * 26,
        "scope": os.environ.get("FTS_TEST_HF_SCOPE", "openid profile contribute-repos"),
        "expires_at": int(time.time()) + 8 * 60 * 60,
        "userinfo": {"sub": "1" * 23, "name": user.title(), "preferred_username": user,
                     "profile": f"https://huggingface.co/{user}", "picture": "", "website": "",
                     "aud": "0" * 8, "auth_time": 1691672844, "nonce": "a" * 19, "iat": 1691672844,
                     "exp": 1691676444, "iss": "https://huggingface.co"},
    }


gradio.oauth._get_mocked_oauth_info = mocked_oauth_info
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.argv = [str(REPO / "app.py")]
runpy.run_path(str(REPO / "app.py"), run_name="__main__")
