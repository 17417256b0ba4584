"""Finetune Studio core: the product as a library, importable without Gradio."""
