"""A job's supervisor: ``python -m core.runs.supervise --job-id N`` — the process a backend starts.

It starts the kind's worker process (which dies with it), samples the worker's memory, writes the job's heartbeat,
and when the worker ends without having recorded its ending — killed by the kernel's out-of-memory killer, by
``kill -9``, a crash in native code — it records the cause it can see: the signal, the peak memory against the
limit, what to change. Then it starts the next queued job, so the queue moves with no dashboard open.

It is small (no torch) and lives as long as its worker; the job's ``pid`` is this process, the leader of the job's
process group, so one signal to the group reaches supervisor and worker alike.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
import time
from collections import deque

from core.config import REPO_ROOT
from core.runs import memory, paths, ranks, store, warm
from core.runs.errors import fmt_bytes
from core.runs.kinds import get_kind, oom_advice
from core.runs.worker import log
from storage import RunStatus

SAMPLE_S = 0.5
HEARTBEAT_S = 5.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def describe_death(returncode: int, *, peak: int | None, last: int | None = None, limit: int | None,
                   limit_source: str, oom_kills: int, advice: str) -> tuple[RunStatus, str]:
    """(ending, message) for a worker that ended without recording how. ``peak``/``last``: its largest and its
    final sampled RSS; ``limit``: how far it could grow at that final sample, and what set that (``limit_source``)."""
    last = peak if last is None else last
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        mem = ""
        if peak and limit:
            mem = f"peak RSS {fmt_bytes(peak)}"
            mem += (f" of {fmt_bytes(limit)} ({limit_source})" if last == peak else
                    f"; at the end {fmt_bytes(last)} of the {fmt_bytes(limit)} it could use ({limit_source})")
        if sig == signal.SIGKILL:
            near_limit = bool(last and limit and last >= 0.85 * limit)
            if oom_kills > 0 or near_limit:
                who = "the kernel's out-of-memory killer" if oom_kills > 0 else "likely out of memory"
                return RunStatus.failed, (f"killed by signal 9, {who}: {mem or 'memory not sampled'}. "
                                          f"{advice}".strip())
            return RunStatus.failed, (f"killed by signal 9 (SIGKILL) from outside the studio; "
                                      f"{mem + ', ' if mem else ''}so probably not out of memory (killed by hand or "
                                      "by the system)")
        if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            return RunStatus.interrupted, f"terminated by {name} before it could save (host shutdown?)"
        return RunStatus.failed, f"the worker died of {name} (signal {sig}), a crash in native code"
    if returncode == 0:
        return RunStatus.failed, "the worker exited without recording how the job ended"
    return RunStatus.failed, f"the worker exited with code {returncode} without recording how the job ended"


STOP_POLL_S = 1.0


def _memory_cap(job) -> tuple[int, str] | None:
    """(bytes, what set it): the most the worker may hold, from the job's config (``memory_cap_bytes``)."""
    try:
        cap = int((job.config or {}).get("memory_cap_bytes") or 0)
    except (TypeError, ValueError):
        return None
    return (cap, str((job.config or {}).get("memory_cap_source") or "its memory cap")) if cap > 0 else None


def _wall_clock_budget_s(job) -> float | None:
    """A job's wall-clock budget from its config (``max_wall_clock_hours``; 0 or none: no limit)."""
    try:
        hours = float((job.config or {}).get("max_wall_clock_hours") or 0)
    except (TypeError, ValueError):
        return None
    return hours * 3600 if hours > 0 else None


class _Tee:
    """The supervisor's stdout when ``--tee-log``: each write goes to the stream the backend gave it (Ray's job log)
    and to the job's log file (what the studio reads, on storage every node shares)."""

    def __init__(self, stream, path):
        self._stream = stream
        self._file = open(path, "a", encoding="utf-8", errors="replace")
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            for out in (self._stream, self._file):
                try:
                    out.write(text)
                    out.flush()
                except (OSError, ValueError):
                    pass
        return len(text)

    def flush(self) -> None:
        pass


def _copy_output(pipe, out: _Tee) -> None:
    for raw in iter(pipe.readline, b""):
        out.write(raw.decode("utf-8", errors="replace"))
    pipe.close()


def supervise(job_id: int, tee_log: bool = False) -> int:
    import socket
    import subprocess

    terminating = threading.Event()
    child: subprocess.Popen | None = None

    def on_term(signum, frame):
        terminating.set()
        if child is not None and child.poll() is None:
            try:
                os.kill(child.pid, signal.SIGTERM)  # idempotent when the whole group got it too
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        job = store.get(job_id, fold=False)
    except Exception as exc:  # noqa: BLE001
        log(f"supervisor: run {job_id} cannot be read from the database: {exc}")
        return 2
    if not job.status.is_active:
        log(f"supervisor: run {job_id} is {job.status}; nothing to start")
        return 0
    kind = get_kind(job.kind)
    cmd = kind.command(job)
    paths.ranks_path(job_id).unlink(missing_ok=True)  # an earlier attempt's ranks (a multi-process run's launcher)
    tee = None
    if tee_log:
        tee = _Tee(sys.stdout, paths.log_path(job_id))
        sys.stdout = sys.stderr = tee
    # the job kind's own argv (python -m core.<kind>.worker <id>), no shell: forked from the warm worker (its
    # libraries already imported) where one runs for this environment, else started cold
    child = None if tee else warm.spawn(cmd, env=dict(os.environ), cwd=str(REPO_ROOT))
    if child is not None:
        log(f"supervisor: worker {child.pid} started from the warm worker (libraries already imported)")
    else:
        child = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=dict(os.environ),  # noqa: S603
                                 stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                                 stdout=subprocess.PIPE if tee else None,
                                 stderr=subprocess.STDOUT if tee else None)
    copier = None
    if tee is not None:
        copier = threading.Thread(target=_copy_output, args=(child.stdout, tee), daemon=True)
        copier.start()
    if terminating.is_set():
        on_term(signal.SIGTERM, None)
    try:  # where it runs: a cluster backend learns the host only now
        store.report_progress(job_id, worker_pid=child.pid, worker_host=socket.gethostname())
    except Exception as exc:  # noqa: BLE001
        log(f"supervisor: could not record the worker pid: {exc}")
    # OOM-kill counter readings of the last few samples: the kernel counts a kill when it picks the victim, a
    # moment before the process is gone, so "before" is the reading from two samples back
    oom_counts = deque([memory.oom_kill_count()] * 3, maxlen=3)
    peak = last = 0
    limit, limit_source = None, ""  # how far the worker could grow, as of the last sample
    last_beat = last_poll = 0.0
    budget_s = _wall_clock_budget_s(job)
    started = time.monotonic()
    budget_spent = False
    cap = _memory_cap(job)
    over_cap: int | None = None  # the RSS at which the worker was stopped for going over its cap
    first = True  # a sample as soon as it starts: a worker forked warm can be at its second step within 0.2 s
    while child.poll() is None:
        oom_counts.append(memory.oom_kill_count())
        try:  # returns at once when the worker ends: its ending is recorded within milliseconds
            child.wait(timeout=0 if first else SAMPLE_S)
            break
        except subprocess.TimeoutExpired:
            first = False
        rss = memory.tree_rss_bytes(child.pid)
        if rss:
            peak, last = max(peak, rss), rss
            if cap and rss > cap[0] and over_cap is None:
                over_cap = rss  # stopped from outside: a process near its own limit cannot be trusted to stop
                log(f"supervisor: the worker holds {fmt_bytes(rss)}, over its cap of {fmt_bytes(cap[0])} ({cap[1]}); "
                    "stopping it")
                try:
                    child.kill()
                except ProcessLookupError:
                    pass
            try:  # other processes and cgroup moves change it: read it with every sample
                limit, limit_source = memory.memory_ceiling(child.pid, rss)
            except (OSError, ValueError):
                pass
        now = time.monotonic()
        if budget_s and not budget_spent and now - started > budget_s and not terminating.is_set():
            budget_spent = True  # the studio's wall-clock budget: a stop through the database, as a person's
            reason = (f"stopped by the studio after {budget_s / 3600:g} h of running (its wall-clock budget per run: "
                      "max_wall_clock_hours / FTS_MAX_RUN_HOURS); the checkpoint is kept — resume to continue")
            log(f"supervisor: {reason}")
            try:
                store.request_stop(job_id, reason=reason)
            except Exception as exc:  # noqa: BLE001 - the next poll sees the stop, or the kill below ends it
                log(f"supervisor: could not record the stop ({exc}); stopping the worker directly")
                on_term(signal.SIGTERM, None)
            last_poll = 0.0
        if now - last_poll >= STOP_POLL_S and not terminating.is_set():
            # a stop asked for from any dashboard or CLI, on any host, reaches the worker through the database
            last_poll = now
            try:
                if store.get(job_id, fold=False).status == RunStatus.stopping:
                    log("supervisor: stop requested; asking the worker to checkpoint and stop")
                    on_term(signal.SIGTERM, None)
            except Exception:  # noqa: BLE001, S110 - a database that does not answer: the next poll asks again
                pass
        if now - last_beat >= HEARTBEAT_S and child.poll() is None:
            last_beat = now
            try:
                store.heartbeat(job_id, peak_memory_bytes=peak or None, memory_limit_bytes=limit)
            except Exception:  # noqa: BLE001, S110 - a busy or full database must not stop the supervision
                pass
    rc = child.returncode
    if copier is not None:
        copier.join(timeout=5)  # the worker's last lines are in the log before its ending is judged
    oom_after = memory.oom_kill_count()
    oom_before = oom_counts[0]
    try:
        run = store.get(job_id)  # folds an ending the worker could only write to outcome.json
    except Exception as exc:  # noqa: BLE001
        log(f"supervisor: cannot read run {job_id} after its worker ended: {exc}")
        run = None
    if run is not None and run.attempt != job.attempt:
        run = None  # this attempt's ending is recorded and the job has moved on (resumed): nothing of ours to write
    rank_report = ranks.read_report(job_id) if run is not None else None
    if run is not None and run.status.is_active:
        advice = oom_advice(kind, run.config or {}, limit)
        status, message = describe_death(rc, peak=peak or None, last=last or None, limit=limit,
                                         limit_source=limit_source,
                                         oom_kills=oom_after - oom_before, advice=advice)
        if over_cap is not None:
            fix = advice or "Use a smaller input, or ask the admin to raise the cap."
            status, message = RunStatus.failed, (
                f"out of memory: the worker held {fmt_bytes(over_cap)}, over the {fmt_bytes(cap[0])} this kind of job "
                f"may use ({cap[1]}), and was stopped. {fix}")
        if run.status == RunStatus.stopping and status != RunStatus.failed:
            status = RunStatus.stopped
        if run.status == RunStatus.stopping and rc == -signal.SIGKILL:
            status, message = RunStatus.stopped, "stopped (the worker was killed after the stop timeout)"
        rank_tail = ""
        if rank_report and rank_report.get("failed_rank") is not None and over_cap is None \
                and status != RunStatus.stopped:
            message = ranks.rank_ending(rank_report, message) + "\n" + _rank_peaks(rank_report)
            lines = rank_report.get("tail") or []
            k = rank_report["failed_rank"]
            rank_tail = f"--- rank {k} log tail ---\n" + "\n".join(lines) + "\n" if lines else ""
        log(f"supervisor: {message}")
        tail = paths.log_tail(job_id, max_lines=25)
        if rank_tail:
            print(rank_tail + f"--- end of rank {rank_report['failed_rank']} ---", flush=True)
        ckpt = paths.latest_checkpoint(paths.job_dir(job_id))
        store.finish(job_id, status, error=f"{message}\n{rank_tail}--- log tail ---\n{tail}"
                     if status != RunStatus.stopped else None, attempt=run.attempt,
                     resume_from_checkpoint=str(ckpt) if ckpt else None,
                     peak_memory_bytes=peak or None, memory_limit_bytes=limit)
    else:
        try:
            store.report_progress(job_id, peak_memory_bytes=peak or None, memory_limit_bytes=limit)
        except Exception:  # noqa: BLE001, S110 - best effort; the next tick reports
            pass
    if rank_report:
        _record_rank_figures(job_id, rank_report)
    try:  # hand the device to the next queued job
        from core.runs.scheduler import dispatch

        dispatch()
    except Exception as exc:  # noqa: BLE001
        log(f"supervisor: could not start the next queued job: {exc}")
    return rc if rc >= 0 else 128 - rc


def _rank_peaks(report: dict) -> str:
    return "peak RSS per rank: " + ", ".join(f"rank {i} {fmt_bytes(b)}" for i, b in
                                             enumerate(report.get("peak_rss_bytes") or []))


def _record_rank_figures(job_id: int, report: dict) -> None:
    """Each rank's peak RSS (and node) beside the run's other figures: ``final_metrics``'s
    ``peak_rss_bytes_per_rank`` (``peak_memory_bytes`` is the whole job's, all ranks together) and ``nodes``."""
    try:
        run = store.get(job_id, fold=False)
        figures = {"peak_rss_bytes_per_rank": report.get("peak_rss_bytes") or [],
                   "nodes": report.get("nodes") or []}
        store.report_progress(job_id, final_metrics={**(run.final_metrics or {}), **figures})
    except Exception as exc:  # noqa: BLE001 - figures, not the ending
        log(f"supervisor: could not record the ranks' peaks: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.runs.supervise")
    parser.add_argument("--job-id", type=int, required=True)
    parser.add_argument("--tee-log", action="store_true",
                        help="copy the worker's output to the job's log file as well as to stdout (cluster backends)")
    args = parser.parse_args(argv)
    return supervise(args.job_id, tee_log=args.tee_log)


if __name__ == "__main__":
    sys.exit(main())
