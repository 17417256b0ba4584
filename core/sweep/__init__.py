"""Hyperparameter sweeps (issue 29): a base run config + a search space + an objective + a budget, searched with
Optuna's ask-and-tell over the studio's own runs queue — every trial is an ordinary training run.

    spec    the sweep file (the CLI's contract, written by the Sweep view too), checked against TrainConfig
    study   the Optuna study in the studio's database (RDB storage): trials, best, importance, best-so-far
    driver  the ``sweep`` job's entry point: asks, queues, watches, prunes, tells; reattaches after a restart
    jobs    submit / read / stop a sweep; continue its best trial
    cli     ``python -m core sweep`` / ``sweeps``

It sits above train and evaluate (it queues their jobs) and under the UI and the CLI.
"""
