"""Evaluate: metrics of a base model against its fine-tuned adapters (multiple choice, ...)."""
