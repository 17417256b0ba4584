"""Training: the typed TrainConfig, the worker subprocess entry and its callbacks."""
