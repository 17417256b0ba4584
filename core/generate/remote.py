"""A remote decoder: one conversation streamed from an OpenAI-compatible endpoint (a running deployment)."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

from core.generate.decoding import GenSettings, RowState
from core.generate.errors import GenerateError
from core.generate.sources import ModelSource

NO_KEY = "no-key"


def _api_key(source: ModelSource) -> str | None:
    """The key to send: read from the environment variable the source names at the moment of the call (never kept on
    the source, the database or a log). A source naming a variable that is unset sends ``no-key`` — without a key of
    its own huggingface_hub's client would send this machine's Hugging Face token to a server that is not the Hub.
    A source naming none (the studio's own deployments: local, container, TGI, vLLM servers) sends ``no-key`` too,
    unless its server is Hugging Face's own (an Inference Endpoint), where the client's default — the Hub token — is
    the credential it needs."""
    if not source.api_key_env:
        return None if _is_hugging_face(source.endpoint) else NO_KEY
    return os.environ.get(source.api_key_env, "").strip() or NO_KEY


def _is_hugging_face(url: str | None) -> bool:
    from urllib.parse import urlparse

    host = (urlparse(url or "").hostname or "").lower()
    return any(host == d or host.endswith("." + d) for d in ("huggingface.co", "huggingface.cloud", "hf.space"))


class EndpointDecoder:
    """One conversation streamed from an OpenAI-compatible endpoint (a running deployment) through
    ``huggingface_hub.InferenceClient``, read by a background thread; ``step()`` takes what has arrived, so it
    interleaves with local decoders in :func:`stream`. Each streamed delta counts as a token."""

    remote = True

    def __init__(self, source: ModelSource, messages: Sequence[dict], settings: GenSettings, *,
                 started: float | None = None):
        import queue

        self.settings = settings.validated()
        self.started = started if started is not None else time.perf_counter()
        self.rows = [RowState(0, "endpoint")]
        self._parts: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._endpoint = source.endpoint
        self.active = [0]
        self._thread = threading.Thread(target=self._read, args=(source, list(messages)), daemon=True)
        self._thread.start()

    def _read(self, source: ModelSource, messages: list[dict]) -> None:
        s = self.settings
        chunks = None
        try:
            from huggingface_hub import InferenceClient

            client = InferenceClient(base_url=source.endpoint, timeout=300, api_key=_api_key(source))
            chunks = client.chat_completion(messages=messages, model=source.base, max_tokens=s.max_new_tokens,
                                            temperature=s.temperature, top_p=s.top_p if s.top_p < 1 else None,
                                            seed=s.seed, stream=True)
            for chunk in chunks:
                if self._cancel.is_set():  # the page went away: stop reading, so the server stops generating
                    break
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    self._queue.put(delta)
            self._queue.put(None)
        except Exception as exc:  # noqa: BLE001 - the endpoint's failure is this side's message
            self._queue.put(GenerateError(f"the endpoint {source.endpoint} failed: {type(exc).__name__}: "
                                          f"{str(exc)[:300]}"))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001, S110 - closing a finished or broken stream
                    pass

    def close(self) -> None:
        """Stop reading the stream (the consumer is gone)."""
        self._cancel.set()
        self.active = []

    @property
    def done(self) -> bool:
        return not self.active

    def step(self, timeout_s: float = 0.0) -> list[tuple[int, int]]:
        import queue

        if self.done:
            return []
        items = []
        try:
            items.append(self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait())
            while True:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        if not items and not self._thread.is_alive() and self._queue.empty():
            self.active = []
            raise GenerateError(f"the stream from {self._endpoint} ended without a word")
        row = self.rows[0]
        now = time.perf_counter() - self.started
        for item in items:
            if item is None:
                row.done, row.end_s, self.active = True, now, []
                break
            if isinstance(item, Exception):
                self.active = []
                raise item
            row.first_token_s = now if row.first_token_s is None else row.first_token_s
            row.tokens.append(0)
            self._parts.append(item)
            row.end_s = now
        return [(0, 0)] * len(items)

    def text(self, pos: int) -> str:
        return "".join(self._parts)
