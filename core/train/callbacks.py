"""The trainer callback that reports a run's progress and metrics through the runs store as it goes, and turns a
stop request into checkpoint-then-stop; only rank 0 writes. Each metric row it stores goes, with the same names and
values, to the run's experiment trackers (``report_to``, core.train.trackers).
"""
from __future__ import annotations

import math
import time

from core.runs.worker import JobContext, log
from core.train.distributed import sum_over_ranks


def checkpointed_modules(model) -> int:
    """How many modules of the model have activation (gradient) checkpointing switched on."""
    return sum(1 for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True)


def _memory_bytes() -> int | None:
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001
        return None


def _num(v):
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def make_metrics_callback(ctx: JobContext, tokens_seen, samples=None, report=None):
    """``tokens_seen()``: tokens trained on so far; ``samples()``: a GRPO run's latest sample answers; ``report``: the
    run's trackers (core.train.trackers.Reporter), given each stored metric row."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Reports progress through the runs store as it happens and turns a stop request into
        checkpoint-then-stop."""

        def __init__(self):
            self.t0 = time.time()
            self.tokens0 = 0
            self.local_tokens = 0  # this rank's count at the last step end
            self.all_tokens = 0  # every rank's (what the run has trained on)
            self.step0 = 0
            self.last_tps: float | None = None
            self.window: list[tuple[float, int]] = []
            self.cpu_share = None  # core.train.cpu_share: the threads follow the host's free cores (CPU runs)

        def on_train_begin(self, args, state, control, **kw):
            import torch

            from core.train.cpu_share import CpuShare

            self.cpu_share = CpuShare.for_this_process(torch, log)
            if self.cpu_share is not None:
                log(f"cpu threads: {self.cpu_share.threads}, fewer while other processes keep the cores busy")
            self.local_tokens = self.all_tokens = tokens_seen()  # rank 0: from the metrics when resumed
            if not state.is_world_process_zero:
                return
            self.t0 = time.time()
            self.step0 = state.global_step
            self.tokens0 = self.all_tokens
            ctx.progress(max_steps=state.max_steps, step=state.global_step)
            n_ckpt = checkpointed_modules(kw["model"]) if kw.get("model") is not None else 0
            if args.activation_checkpointing and n_ckpt == 0:
                raise RuntimeError("gradient checkpointing was asked for but the model did not switch it on")
            log(f"training: {state.max_steps} steps (starting at {state.global_step})"
                + (f"; gradient checkpointing active in {n_ckpt} modules" if n_ckpt else ""))

        def on_step_end(self, args, state, control, **kw):
            if self.cpu_share is not None:
                self.cpu_share.tick()
            # several ranks: one all-reduce per step — a stop asked of any rank stops all at this step (their
            # checkpoint is one collective save), and the step's tokens are every rank's
            local = tokens_seen()
            stops, new_tokens = sum_over_ranks([1.0 if ctx.should_stop() else 0.0, float(local - self.local_tokens)])
            self.local_tokens = local
            self.all_tokens += int(new_tokens)
            if stops > 0:
                ctx.stop_event.set()
                log(f"stop requested: saving checkpoint at step {state.global_step}")
                control.should_save = True
                control.should_training_stop = True
            if not state.is_world_process_zero:
                return
            now = time.time()
            self.window.append((now, self.all_tokens))
            self.window = self.window[-20:]
            if len(self.window) >= 2 and self.window[-1][0] > self.window[0][0]:
                (ta, ka), (tb, kb) = self.window[0], self.window[-1]
                self.last_tps = (kb - ka) / (tb - ta)
            elif now > self.t0:
                self.last_tps = (self.all_tokens - self.tokens0) / (now - self.t0)
            done = state.global_step - self.step0
            eta = (now - self.t0) / done * (state.max_steps - state.global_step) if done > 0 else None
            ctx.progress(step=state.global_step, epoch=float(state.epoch or 0.0), tokens_per_s=self.last_tps,
                         eta_s=eta)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            if "train_runtime" in logs:  # the end-of-training summary, not a step
                return
            from core.train.grpo import GRPO_KEYS
            from core.train.preference import PREFERENCE_KEYS

            keys = [*PREFERENCE_KEYS, *GRPO_KEYS,
                    *(k for k in logs if k.startswith("rewards/") and k.endswith("/mean"))]  # GRPO: each reward
            extra = {k: _num(logs[k]) for k in keys if _num(logs.get(k)) is not None}
            extra["tokens_seen"] = int(self.all_tokens)  # the x axis of runs compared by tokens
            if samples is not None and samples():
                extra["samples"] = samples()
            row = dict(epoch=float(logs.get("epoch", state.epoch or 0.0)), loss=_num(logs.get("loss")),
                       eval_loss=_num(logs.get("eval_loss")), lr=_num(logs.get("learning_rate")),
                       grad_norm=_num(logs.get("grad_norm")), tokens_per_s=self.last_tps,
                       memory_bytes=_memory_bytes(), wall_time_s=time.time() - self.t0)
            ctx.metric(step=state.global_step, **row, extra=extra)
            if report is not None:  # the trackers get the row just stored: same names, same values
                report.log(state.global_step, {**row, **extra})
            parts = [f"step {state.global_step}/{state.max_steps}"]
            for key in ("loss", "eval_loss", "rewards/margins", "rewards/accuracies", "reward", "reward_std",
                        "completions/mean_length", "grad_norm", "learning_rate"):
                if key in logs:
                    parts.append(f"{key} {logs[key]:.4g}")
            if self.last_tps:
                parts.append(f"{self.last_tps:.0f} tok/s")
            log("  ".join(parts))

        def on_train_end(self, args, state, control, **kw):
            if self.cpu_share is not None and (line := self.cpu_share.summary()):
                log(line)

    return MetricsCallback()
