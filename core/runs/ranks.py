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
  for it forever in their next collective — its log tail is written to the job's log, and this process ends the
  same way the rank did (the same signal, or its exit code), so the supervisor records the run as failed, with
  the tail, and it can be resumed from its last checkpoint.

No torch here: it is as small as the supervisor, and lives as long as its ranks.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque

from core.runs.errors import fmt_bytes
from core.runs.worker import log

POLL_S = 0.1  # a dead rank is noticed within this (the others are blocked on it)
SAMPLE_EVERY = 5  # polls between RSS samples
TAIL_LINES = 15
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # in the child between fork and exec: a rank never outlives its launcher
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def run_ranks(processes: int, argv: list[str]) -> int:
    """Start ``processes`` ranks of ``argv``, watch them, return (or die with) how the group ended."""
    port = free_port()
    ranks: list[subprocess.Popen] = []
    tails: list[deque] = []
    terminating = threading.Event()

    def on_term(signum, frame):
        terminating.set()
        for p in ranks:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    for rank in range(processes):
        tail: deque = deque(maxlen=TAIL_LINES)
        p = subprocess.Popen(argv, env=rank_environment(dict(os.environ), rank, processes, port),  # noqa: S603
                             stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                             stdout=None if rank == 0 else subprocess.PIPE,
                             stderr=None if rank == 0 else subprocess.STDOUT)
        if rank:
            threading.Thread(target=_keep_tail, args=(p.stdout, tail), daemon=True).start()
        ranks.append(p)
        tails.append(tail)
    log(f"ranks: {processes} processes started (pids {', '.join(str(p.pid) for p in ranks)}; rendezvous on "
        f"127.0.0.1:{port})")
    peaks = [0] * processes
    failed: int | None = None
    polls = 0
    while True:
        if polls % SAMPLE_EVERY == 0:
            for i, p in enumerate(ranks):
                if p.poll() is None:
                    peaks[i] = max(peaks[i], _rss(p.pid))
        polls += 1
        done = [p.poll() is not None for p in ranks]
        failed = next((i for i, p in enumerate(ranks) if p.returncode not in (None, 0)), None)
        if failed is not None or all(done):
            break
        time.sleep(POLL_S)
    if failed is not None:
        for p in ranks:  # the others wait for the dead rank in their next collective: end them now
            if p.poll() is None:
                p.kill()
        for p in ranks:
            p.wait()
    log("ranks: peak RSS " + ", ".join(f"rank {i} {fmt_bytes(b)}" for i, b in enumerate(peaks)))
    if failed is None:
        return 0
    rc = ranks[failed].returncode
    log(f"ranks: rank {failed} (pid {ranks[failed].pid}) {describe_exit(rc)}; the other rank(s) were stopped")
    if failed and tails[failed]:
        time.sleep(0.2)  # its last lines reach the tail reader
        print(f"--- rank {failed} log tail ---\n" + "\n".join(tails[failed]) + f"\n--- end of rank {failed} ---",
              flush=True)
    sys.stdout.flush()
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
    return run_ranks(args.processes, command)


if __name__ == "__main__":
    sys.exit(main())
