"""A trivial job kind for the runs-core tests (registered through FTS_JOB_KINDS=tests.job_kinds): it counts to
``steps`` with ``sleep_s`` between steps, reporting progress and a metric per step, and stops when asked."""
from __future__ import annotations

import time

from core.runs.kinds import JobKind, register
from core.runs.worker import JobContext, JobResult, StopRequested
from storage import RunStatus


def count(ctx: JobContext) -> JobResult:
    steps = int(ctx.config.get("steps", 5))
    sleep_s = float(ctx.config.get("sleep_s", 0.2))
    if ctx.config.get("fail"):
        raise ValueError(ctx.config["fail"])
    ctx.progress(max_steps=steps)
    time.sleep(float(ctx.config.get("start_delay_s", 0)))  # "loading the model"
    for step in range(1, steps + 1):
        if ctx.should_stop():
            if step == 1:
                raise StopRequested()
            return JobResult(status=RunStatus.stopped, final_metrics={"counted": step - 1})
        time.sleep(sleep_s)
        ctx.progress(step=step)
        ctx.metric(step=step, loss=1.0 / step)
        ctx.log(f"step {step}/{steps}")
    extra = {}
    if ctx.config.get("report_hub_telemetry"):  # what the worker's huggingface_hub makes of its environment
        from huggingface_hub import constants

        extra["hub_telemetry_disabled"] = constants.HF_HUB_DISABLE_TELEMETRY
    return JobResult(final_metrics={"counted": steps, **extra}, summary=f"counted to {steps}")


register(JobKind("count", "tests.job_kinds:count", description="counts (tests only)"))
