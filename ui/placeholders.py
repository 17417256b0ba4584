"""Tabs whose capability is not built yet. They say so plainly — no fake content."""
from __future__ import annotations

from ui.common import not_built


def build_evaluate_tab() -> None:
    not_built(
        "Evaluate",
        "Will compare the base model with a fine-tuned run on the held-out split (loss/perplexity, task metrics, "
        "side-by-side generations).",
        "Meanwhile each run records its training and eval loss in the Train tab and in `python -m core runs show ID`.",
    )


def build_playground_tab() -> None:
    not_built(
        "Playground",
        "Will chat with the base and a fine-tuned model side by side, streaming tokens.",
        "Meanwhile a run's adapter is saved under workspace/runs/<id>/adapter and loads with PEFT.",
    )


def build_deploy_tab() -> None:
    not_built(
        "Deploy",
        "Will merge an adapter into its base model, export (safetensors / GGUF) and serve it through a TGI container "
        "or a local OpenAI-compatible server.",
        "Not available in this version.",
    )
