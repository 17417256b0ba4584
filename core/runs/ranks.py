"""Several ranks of one job on this host: ``python -m core.runs.ranks --processes N -- python -m core.runs.worker
--job-id ID`` — the process a multi-process training run's supervisor starts (core.runs.kinds).

It starts the N copies of the worker command with the variables ``torch.distributed`` reads (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` on a free port), like
``torchrun`` does, and watches them as one job:

* rank 0's output is the job's log; the other ranks' output is kept (the last lines of each, in memory), and
  shown in the log only when that rank fails — only rank 0 writes the job's records;
* each rank's RSS is sampled; the peaks are logged when the ranks end (``ranks: peak RSS …``);
* SIGTERM (a stop) is passed to every rank: they agree on a step, checkpoint together and stop;
* when one rank dies (a signal or an exit code other than 0) the others are killed at once — they would wait
  for it forever in their next collective — and this process ends the same way the rank did (the same signal, or
  its exit code), so the supervisor records the run as failed (``rank 1 of 2 was killed by signal 9 …``, that
  rank's log tail after it) and it can be resumed from its last checkpoint;
* ``ranks.json`` in the run folder (core.runs.paths.ranks_path) says how they ended: each rank's peak RSS and
  node, and the failed rank, how it ended and its last lines — what the supervisor puts in the run's record.

No torch here: it is as small as the supervisor, and lives as long as its ranks.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque

from core.runs import paths, store, warm
from core.runs.errors import fmt_bytes
from core.runs.ports import free_port
from core.runs.worker import log
from storage import RunStatus

POLL_S = 0.1  # a dead rank is noticed within this (the others are blocked on it)
SAMPLE_EVERY = 5  # polls between RSS samples
TAIL_LINES = 15
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # in the child between fork and exec: a rank never outlives its launcher
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def rank_environment(base: dict, rank: int, world: int, port: int) -> dict:
    """The variables ``torch.distributed`` (and accelerate, through it) reads for one rank on this host."""
    return {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "PYTHONUNBUFFERED": "1"}


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with code {returncode}"


def _keep_tail(pipe, tail: deque) -> None:
    for raw in iter(pipe.readline, b""):
        tail.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
    pipe.close()


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class LocalRank:
    """One rank of this launcher: rank 0's output is the launcher's (the job's log), the others' last lines are kept.

    Forked from the job's warm worker (core.runs.warm: torch, transformers, peft already imported; it dies when this
    launcher does, as it watches its connection to it) where one answers, else a child process started cold (which
    dies with its parent through PR_SET_PDEATHSIG)."""

    def __init__(self, rank: int, argv: list[str], env: dict) -> None:
        self.rank, self.node = rank, socket.gethostname()
        self.tail: deque = deque(maxlen=TAIL_LINES)
        read_end = write_end = None
        if rank:
            read_end, write_end = os.pipe()
        try:
            self.proc = warm.spawn(argv, env=env, cwd=os.getcwd(), stdout=write_end, stderr=write_end)
        except Exception:  # noqa: BLE001 - a warm worker that fails to answer: the rank starts cold instead
            self.proc = None
        self.warm = self.proc is not None
        if not self.warm:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,  # noqa: S603
                                         preexec_fn=_die_with_parent, stdout=write_end, stderr=write_end)
        self.pid = self.proc.pid
        if rank:
            os.close(write_end)  # the rank holds its own copy: the reader sees the end when the rank ends
            reader = os.fdopen(read_end, "rb")
            threading.Thread(target=_keep_tail, args=(reader, self.tail), daemon=True).start()

    def poll(self) -> int | None:
        return self.proc.poll()

    def rss(self) -> int:
        return _rss(self.pid)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill_and_wait(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def tail_lines(self) -> list[str]:
        time.sleep(0.2)  # its last lines reach the tail reader
        return list(self.tail)


def start_local(processes: int, argv: list[str]) -> tuple[list, str]:
    """The ranks as children of this process, meeting on a free loopback port. (ranks, rendezvous address)."""
    port = free_port()
    ranks = [LocalRank(rank, argv, rank_environment(dict(os.environ), rank, processes, port))
             for rank in range(processes)]
    return ranks, f"127.0.0.1:{port}"


def job_id_of(argv: list[str]) -> int | None:
    """The job of a worker command (``... --job-id N``), for the report this launcher leaves in its run folder."""
    try:
        return int(argv[argv.index("--job-id") + 1])
    except (ValueError, IndexError):
        return None


def write_report(job_id: int | None, report: dict) -> bool:
    if job_id is None:
        return False
    target = paths.ranks_path(job_id)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(report), encoding="utf-8")
        os.replace(tmp, target)
        return True
    except OSError as exc:
        log(f"ranks: could not write {target}: {exc}")
        return False


def read_report(job_id: int) -> dict | None:
    """What the launcher of a multi-process run left (``ranks.json``), or None."""
    try:
        report = json.loads(paths.ranks_path(job_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def rank_ending(report: dict, message: str) -> str:
    """The first line of a run whose rank died: which rank of how many, and how (the supervisor's diagnosis of the
    signal — out of memory or not — said of that rank)."""
    who = f"rank {report.get('failed_rank')} of {report.get('world')}"
    node = report.get("nodes") and len(set(report["nodes"])) > 1 and report["nodes"][report["failed_rank"]]
    who += f" (on {node})" if node else ""
    rc = int(report.get("returncode") or 0)
    if rc > 0:
        return f"{who} exited with code {rc}; the other rank(s) were stopped"
    if message.startswith("the worker "):
        return f"{who} {message[len('the worker '):]}"
    return f"{who} was {message}"


def record_nodes(job_id: int | None, ranks: list) -> None:
    """Where the ranks run, in the run's row (``worker_host``): its nodes, when they are several."""
    nodes = list(dict.fromkeys(r.node for r in ranks))
    if job_id is None or len(nodes) < 2:
        return
    try:
        store.report_progress(job_id, worker_host=", ".join(nodes))
    except Exception as exc:  # noqa: BLE001 - the log says it too
        log(f"ranks: could not record the nodes: {exc}")


def fail_unplaced(job_id: int | None, message: str) -> int:
    """The cluster could not hold the ranks: the run fails with that, in one line (nothing ran)."""
    log(f"ranks: {message}")
    if job_id is not None:
        try:
            store.finish(job_id, RunStatus.failed, error=message)
        except Exception as exc:  # noqa: BLE001 - the supervisor records the exit then
            log(f"ranks: could not record the failure: {exc}")
    return 1


def run_ranks(processes: int, argv: list[str], start=start_local, placed=None, release=None) -> int:
    """Start ``processes`` ranks of ``argv`` (``start``: where), watch them, return (or die with) how the group
    ended; the run folder gets ``ranks.json`` (each rank's peak RSS and node; the failed rank, how, its tail).
    ``release``: called before this process ends itself with a rank's signal (what it holds elsewhere — a Ray
    placement group — is given back first: a driver killed by a signal left its bundles held, and a resume waited
    for them)."""
    ranks: list = []
    terminating = threading.Event()

    def on_term(signum, frame):
        terminating.set()
        for r in ranks:
            r.signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    started, rendezvous = start(processes, argv)
    ranks.extend(started)
    if terminating.is_set():
        on_term(signal.SIGTERM, None)
    nodes = [r.node for r in ranks]
    if placed is not None:
        placed(ranks)
    where = f" on nodes {', '.join(nodes)}" if len(set(nodes)) > 1 else ""
    n_warm = sum(1 for r in ranks if getattr(r, "warm", False))  # a Ray rank has no warm worker
    forked = "" if not n_warm else " forked from the warm worker" if n_warm == len(ranks) \
        else f" {n_warm} forked from the warm worker"
    log(f"ranks: {processes} processes started{where} (pids {', '.join(str(r.pid) for r in ranks)}{forked}; "
        f"rendezvous on {rendezvous})")
    peaks = [0] * processes
    failed: int | None = None
    polls = 0
    while True:
        codes = [r.poll() for r in ranks]
        if polls % SAMPLE_EVERY == 0:
            for i, r in enumerate(ranks):
                if codes[i] is None:
                    peaks[i] = max(peaks[i], r.rss())
        polls += 1
        failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
        if failed is not None or all(c is not None for c in codes):
            break
        time.sleep(POLL_S)
    if failed is not None:
        for r in ranks:  # the others wait for the dead rank in their next collective: end them now
            r.kill_and_wait()
    log("ranks: peak RSS " + ", ".join(f"rank {i} {fmt_bytes(b)}" for i, b in enumerate(peaks)))
    report = {"world": processes, "nodes": nodes, "pids": [r.pid for r in ranks], "peak_rss_bytes": peaks,
              "failed_rank": failed}
    if failed is None:
        write_report(job_id_of(argv), report)
        return 0
    rc = codes[failed]
    log(f"ranks: rank {failed} (pid {ranks[failed].pid}) {describe_exit(rc)}; the other rank(s) were stopped")
    tail = ranks[failed].tail_lines() if failed else []
    report.update(returncode=rc, how=describe_exit(rc), tail=tail)
    if not write_report(job_id_of(argv), report) and tail:  # no run folder: the tail goes to the log
        print(f"--- rank {failed} log tail ---\n" + "\n".join(tail) + f"\n--- end of rank {failed} ---", flush=True)
    sys.stdout.flush()
    if rc < 0 and release is not None:
        release()
    if rc < 0:  # end as the rank did, so the supervisor tells a SIGKILL (out of memory?) from an exception
        if -rc not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
        time.sleep(1)
    return rc if rc > 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.runs.ranks")
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the worker command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.processes < 1 or not command:
        parser.error("--processes N (N >= 1) and -- COMMAND are required")
    if (os.environ.get("FTS_JOB_BACKEND") or "local") != "ray":
        return run_ranks(args.processes, command)
    from core.runs import ray_ranks  # a run on the Ray backend: its ranks placed over the cluster's nodes

    try:
        return run_ranks(args.processes, command,
                         start=lambda n, argv: ray_ranks.start_on_ray(n, argv, rank_environment),
                         placed=lambda ranks: record_nodes(job_id_of(command), ranks), release=ray_ranks.release)
    except ray_ranks.PlacementError as exc:
        return fail_unplaced(job_id_of(command), str(exc))
    finally:
        ray_ranks.release()


if __name__ == "__main__":
    sys.exit(main())
