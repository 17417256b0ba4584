"""Shared fixtures: every test gets its own workspace + SQLite file; the converted default model is shared.

The embedded SmolLM2 is converted from GGUF once into ``FTS_TEST_MODELS_DIR`` (default: the repo's
``workspace/models``, which `make run` uses too), so only the first test session pays the ~25 s conversion.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_MODELS = Path(os.environ.get("FTS_TEST_MODELS_DIR", REPO / "workspace" / "models")).resolve()
FIXTURES = Path(__file__).resolve().parent / "fixtures"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["FTS_MODELS_DIR"] = str(SHARED_MODELS)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh workspace (runs, datasets, SQLite DB) for one test; subprocesses inherit it via the environment."""
    from storage import reset_engines

    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.setenv("FTS_WORKSPACE", str(ws))
    monkeypatch.setenv("FTS_MODELS_DIR", str(SHARED_MODELS))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    reset_engines()
    yield ws
    reset_engines()


@pytest.fixture(scope="session")
def default_model_dir():
    from core.models import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from core.models import load_tokenizer

    return load_tokenizer(str(default_model_dir))


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
