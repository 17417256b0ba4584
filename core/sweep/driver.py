"""A sweep's driver: the ``sweep`` job's entry point (core.runs.kinds), a long job in the runs core's "control" lane,
so it holds no training slot.

Optuna's ask-and-tell over the studio's own queue: each trial the sampler asks for becomes an ordinary training run
(``core.train.jobs.submit_training``: the same checks, the same queue, the concurrency limit and the backend — local
or Ray — as any run); the driver watches it through the database, reports its eval loss to the study as it trains
(``trial.report``), stops a trial the pruner calls weak (with a checkpoint, and the run says why), and tells the study
each ending. At most ``parallel`` trials are queued or running at once.

Everything it needs to carry on is in the database — the study (Optuna's RDB storage), each trial's run id (a user
attribute) and the runs themselves — so a driver started again (``runs resume``, or the studio's start after a
crash) reattaches to the trials already running instead of starting them again; a trial whose run was interrupted
with it is resumed from its checkpoint. Stopping the sweep stops its running trials (marked ``paused``: resuming the
sweep resumes them).
"""
from __future__ import annotations

import statistics
import time
from typing import Any

from core import runs
from core.runs import JobError, store
from core.runs.backends import reap_children
from core.runs.worker import JobContext, JobResult
from core.sweep import study as studies
from core.sweep.spec import suggest, trial_config
from storage import RunStatus

POLL_S = 1.0
MAX_TRIAL_RESUMES = 3


def _pruner(spec: dict):
    import optuna

    p = spec.get("pruner") or {}
    if p.get("type") == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=int(p.get("startup_trials", 2)),
                                       n_warmup_steps=int(p.get("warmup_steps", 0)))


def open_study(sweep_id: int, spec: dict):
    import optuna

    sampler = optuna.samplers.TPESampler(seed=spec.get("seed"), n_startup_trials=max(2, min(10, spec["trials"] // 2)))
    study = optuna.create_study(study_name=studies.study_name(sweep_id), storage=studies.storage(),
                                direction=spec["direction"], sampler=sampler, pruner=_pruner(spec),
                                load_if_exists=True)
    if not study.user_attrs.get("fts_sweep"):
        for params in spec.get("enqueue") or []:
            study.enqueue_trial(params)
        study.set_user_attr("started_at", time.time())
        study.set_user_attr("fts_sweep", sweep_id)
    return study


class Driver:
    def __init__(self, ctx: JobContext):
        import optuna

        self.optuna = optuna
        self.ctx = ctx
        self.sweep_id = ctx.job_id
        self.spec = ctx.config
        self.study = open_study(self.sweep_id, self.spec)
        self.seen_metric: dict[int, int] = {}  # trial number -> the last metric row id read of its run
        self.owner = ctx.job.owner or ""

    # ---- reading the study ----------------------------------------------------------------------------------------
    def trials(self, *states):
        got = self.study.get_trials(deepcopy=False)
        return [t for t in got if not states or t.state in states]

    def running(self):
        return self.trials(self.optuna.trial.TrialState.RUNNING)

    def finished_count(self) -> int:
        S = self.optuna.trial.TrialState
        return len(self.trials(S.COMPLETE, S.PRUNED, S.FAIL))

    def _trial(self, frozen):
        return self.optuna.trial.Trial(self.study, frozen._trial_id)

    def _attr(self, frozen, key: str, value: Any) -> None:
        self.study._storage.set_trial_user_attr(frozen._trial_id, key, value)

    # ---- trials ---------------------------------------------------------------------------------------------------
    def launch(self) -> None:
        """Ask the sampler for a trial and queue its run (tagged ``sweep-<id>``, named ``<sweep>-t<number>``)."""
        from core.train.jobs import submit_training

        trial = self.study.ask()
        params = suggest(trial, self.spec["search"])
        self._submit(trial.number, trial._trial_id, params, submit_training)

    def _submit(self, number: int, trial_id: int, params: dict, submit_training) -> None:
        name = f"{self.spec['name']}-t{number}"[:80]
        try:
            config = trial_config({**self.spec["base"], "name": name}, params)
            run = submit_training(config, start=False, owner=self.owner)
        except (JobError, ValueError) as exc:
            self.study._storage.set_trial_user_attr(trial_id, "note", f"not started: {exc}")
            self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
            self.ctx.log(f"trial {number}: could not start ({exc})")
            return
        self.study._storage.set_trial_user_attr(trial_id, "run_id", run.id)
        try:
            store.set_tags(run.id, [f"sweep-{self.sweep_id}"])
        except JobError:
            pass
        runs.dispatch()
        self.ctx.log(f"trial {number}: run {run.id} queued with {params}")

    def reattach_orphan(self, frozen) -> None:
        """A running trial with no run recorded (the driver died between asking and queueing): find the run it may
        have queued by its tag and name, else queue it now."""
        from core.train.jobs import submit_training

        name = f"{self.spec['name']}-t{frozen.number}"[:80]
        tag = f"sweep-{self.sweep_id}"
        for r in runs.list_runs(kind="train", limit=1000):
            if r.name == name and tag in (r.tags or []):
                self._attr(frozen, "run_id", r.id)
                return
        self._submit(frozen.number, frozen._trial_id, dict(frozen.params), submit_training)

    def watch(self, frozen) -> None:
        """One look at a running trial's run: report new eval losses, prune, or tell its ending."""
        run_id = frozen.user_attrs.get("run_id")
        if run_id is None:
            self.reattach_orphan(frozen)
            return
        try:
            run = runs.get_run(int(run_id))
        except Exception as exc:  # noqa: BLE001 - a run deleted under the sweep
            self._tell_fail(frozen, f"its run {run_id} cannot be read: {exc}")
            return
        if self.spec["objective"] == "eval_loss":
            self._report_curve(frozen, run)
        if run.status.is_active:
            return
        if frozen.user_attrs.get("pruned_at_step") is not None:
            self.study.tell(frozen.number, state=self.optuna.trial.TrialState.PRUNED)
            self.ctx.log(f"trial {frozen.number} (run {run.id}) pruned and {run.status}")
            return
        if run.status == RunStatus.succeeded:
            self._finish_succeeded(frozen, run)
        elif run.status in (RunStatus.interrupted, RunStatus.stopped) and \
                (run.status == RunStatus.interrupted or frozen.user_attrs.get("paused")):
            # interrupted with the machine, or stopped with the sweep: it continues from its checkpoint
            n = int(frozen.user_attrs.get("resumes", 0))
            if n >= MAX_TRIAL_RESUMES:
                self._tell_fail(frozen, f"its run {run.id} was {run.status} {n + 1} times")
                return
            self._attr(frozen, "resumes", n + 1)
            self._attr(frozen, "paused", False)
            try:
                runs.resume(run.id)
                self.ctx.log(f"trial {frozen.number}: run {run.id} was {run.status}; resumed from its checkpoint")
            except JobError as exc:
                self._tell_fail(frozen, f"its run {run.id} could not be resumed: {exc}")
        else:
            why = (run.error or str(run.status)).splitlines()[0][:300]
            self._tell_fail(frozen, f"run {run.id} {run.status}: {why}")

    def _tell_fail(self, frozen, note: str) -> None:
        self._attr(frozen, "note", note)
        self.study.tell(frozen.number, state=self.optuna.trial.TrialState.FAIL)
        self.ctx.log(f"trial {frozen.number} failed: {note}")

    def _report_curve(self, frozen, run) -> None:
        since = self.seen_metric.get(frozen.number, 0)
        rows = runs.run_metrics(run.id, since_id=since)
        if not rows:
            return
        self.seen_metric[frozen.number] = rows[-1].id
        reported = set(frozen.intermediate_values)
        trial = self._trial(frozen)
        for m in rows:
            if m.eval_loss is None or m.step in reported:
                continue
            trial.report(float(m.eval_loss), int(m.step))
            reported.add(m.step)
            if run.status.is_active and frozen.user_attrs.get("pruned_at_step") is None and trial.should_prune():
                self._prune(frozen, run, int(m.step), float(m.eval_loss))
                return

    def _prune(self, frozen, run, step: int, value: float) -> None:
        S = self.optuna.trial.TrialState
        others = [t.intermediate_values[step] for t in self.trials(S.COMPLETE) if step in t.intermediate_values]
        median = f"median {statistics.median(others):.4f} of {len(others)} completed trial(s) at that step" \
            if others else "the median of the completed trials"
        reason = (f"pruned by sweep {self.sweep_id} at step {step}: eval_loss {value:.4f} worse than {median}; "
                  "the checkpoint is kept")
        self._attr(frozen, "pruned_at_step", step)
        self._attr(frozen, "note", reason)
        self.ctx.log(f"trial {frozen.number}: {reason}")
        try:
            runs.stop(run.id, wait=False, reason=reason)
        except JobError as exc:  # it ended meanwhile: told as pruned on the next look
            self.ctx.log(f"trial {frozen.number}: stop not needed ({exc})")

    def _finish_succeeded(self, frozen, run) -> None:
        objective = self.spec["objective"]
        if objective == "eval_loss":
            value = _last_eval_loss(run)
            if value is None:
                self._tell_fail(frozen, f"run {run.id} recorded no eval loss")
                return
            self._tell(frozen, run, value)
            return
        self._evaluate(frozen, run, objective)

    def _tell(self, frozen, run, value: float) -> None:
        self.study.tell(frozen.number, value)
        self.ctx.log(f"trial {frozen.number} (run {run.id}): {self.spec['objective']} {value:.4f}")

    def _evaluate(self, frozen, run, metric: str) -> None:
        """An Evaluate metric: the finished trial is evaluated (a job of its own on the queue), then told."""
        from core.evaluate import results
        from core.evaluate.config import EvalConfig
        from core.evaluate.submit import submit_evaluation

        eval_id = frozen.user_attrs.get("eval_job")
        if eval_id is None:
            ev = self.spec.get("eval") or {}
            try:
                cfg = EvalConfig.from_dict({"run_id": run.id, "name": f"{self.spec['name']}-t{frozen.number}",
                                            **{k: v for k, v in ev.items() if v is not None}})
                job = submit_evaluation(cfg, owner=self.owner)
            except (JobError, ValueError) as exc:
                self._tell_fail(frozen, f"its evaluation could not start: {exc}")
                return
            self._attr(frozen, "eval_job", job.id)
            self.ctx.log(f"trial {frozen.number}: evaluating run {run.id} (job {job.id}) for {metric}")
            return
        job = runs.get_run(int(eval_id))
        if job.status.is_active:
            return
        evaluation = results.by_job(int(eval_id))
        tuned = ((evaluation.metrics or {}).get("tuned") or {}) if evaluation is not None else {}
        value = tuned.get(metric)
        if job.status != RunStatus.succeeded or not isinstance(value, (int, float)):
            self._tell_fail(frozen, f"evaluation job {eval_id} {job.status} without {metric}"
                            + (f": {job.error.splitlines()[0]}" if job.error else ""))
            return
        self._tell(frozen, run, float(value))

    # ---- the loop -------------------------------------------------------------------------------------------------
    def budget_spent(self) -> str:
        budget = self.spec.get("budget") or {}
        if budget.get("wall_hours"):
            started = float(self.study.user_attrs.get("started_at") or time.time())
            if time.time() - started > budget["wall_hours"] * 3600:
                return f"its wall-time budget ({budget['wall_hours']:g} h) is spent"
        if budget.get("total_steps"):
            steps = 0
            for t in self.trials():
                rid = t.user_attrs.get("run_id")
                if rid is not None:
                    try:
                        steps += store.get(int(rid)).step or 0
                    except Exception:  # noqa: BLE001, S112 - a deleted run counts nothing
                        continue
            if steps >= budget["total_steps"]:
                return f"its step budget ({budget['total_steps']:,} steps over all trials) is spent"
        return ""

    def stop_trials(self, note: str) -> None:
        """Stop every running trial's run (with a checkpoint); they are ``paused``: resuming the sweep resumes them."""
        for frozen in self.running():
            rid = frozen.user_attrs.get("run_id")
            if rid is None:
                continue
            self._attr(frozen, "paused", True)
            try:
                runs.stop(int(rid), wait=False, reason=note)
            except JobError:
                pass  # already ended

    def step(self) -> bool:
        """One round: watch the running trials, start new ones. True when the sweep is over."""
        for frozen in self.running():
            self.watch(frozen)
        spent = self.budget_spent()
        running = self.running()
        created = len(self.trials()) - len(self.trials(self.optuna.trial.TrialState.WAITING))
        if not spent:
            while len(running) < self.spec["parallel"] and created < self.spec["trials"]:
                self.launch()
                created += 1
                running = self.running()
        self.ctx.progress(step=self.finished_count(), max_steps=self.spec["trials"])
        if spent and not running:
            self.ctx.log(f"sweep {self.sweep_id}: {spent}; no new trials")
        return not running and (created >= self.spec["trials"] or bool(spent))

    def run(self) -> JobResult:
        self.ctx.log(f"sweep {self.sweep_id} '{self.spec['name']}': {self.spec['trials']} trials, "
                     f"{self.spec['parallel']} at a time, {self.spec['direction']} {self.spec['objective']}")
        for frozen in self.running():
            rid = frozen.user_attrs.get("run_id")
            self.ctx.log(f"reattaching to trial {frozen.number}" + (f" (run {rid})" if rid is not None else ""))
        while True:
            if self.ctx.should_stop():
                self.stop_trials(f"stopped with sweep {self.sweep_id}; resuming the sweep resumes it")
                self.ctx.log(f"sweep {self.sweep_id} stopped: its running trials were asked to stop")
                return JobResult(status=RunStatus.stopped, final_metrics=self.summary())
            if self.step():
                break
            reap_children()
            self.ctx.stop_event.wait(POLL_S)
        summary = self.summary()
        return JobResult(final_metrics=summary, summary=f"best run {summary.get('best_run')} "
                                                         f"{self.spec['objective']} {summary.get('best_value')}")

    def summary(self) -> dict:
        b = studies.best(self.study)
        S = self.optuna.trial.TrialState
        return {"trials": len(self.trials()), "complete": len(self.trials(S.COMPLETE)),
                "pruned": len(self.trials(S.PRUNED)), "failed": len(self.trials(S.FAIL)),
                "best_run": b["run_id"] if b else None, "best_value": b["value"] if b else None,
                "best_params": b["params"] if b else None}


def _last_eval_loss(run) -> float | None:
    value = (run.final_metrics or {}).get("eval_loss")
    if isinstance(value, (int, float)):
        return float(value)
    rows = [m for m in runs.run_metrics(run.id) if m.eval_loss is not None]
    return float(rows[-1].eval_loss) if rows else None


def run_job(ctx: JobContext) -> JobResult:
    return Driver(ctx).run()
