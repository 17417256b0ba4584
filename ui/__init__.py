"""Gradio tabs: one module per tab. They bind components to core calls; no ML, no SQL, no subprocess here."""
