"""The one error of core.generate: a model that cannot be used as asked, or a prompt that cannot be generated from."""
from __future__ import annotations


class GenerateError(ValueError):
    """A model that cannot be used as asked, or a prompt that cannot be generated from; the message says why."""
