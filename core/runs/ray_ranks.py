"""The ranks of a multi-process run placed on a Ray cluster, one per bundle of a placement group: what
``core.runs.ranks`` starts instead of local children when the job runs on the Ray backend (``FTS_JOB_BACKEND=ray``).

The launcher (``python -m core.runs.ranks``, started by the run's supervisor inside its Ray job) connects to the
cluster as a driver, reserves one bundle per rank — ``{"GPU": 1}`` each (``{"CPU": 1}`` on a CPU cluster:
``FTS_RAY_NUM_GPUS=0``), placed as ``FTS_RAY_PLACEMENT`` says (PACK by default: as few nodes as fit; SPREAD,
STRICT_SPREAD: one rank per node) — and starts on bundle k a small actor that runs rank k's worker process (the same
command as a local rank, with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``: rank 0's node and a port free
there). The launcher polls the actors: rank 0's new output lines go to its own output (the job's log), the others'
last lines are kept; their RSS is sampled where they run. A stop (SIGTERM) is passed to every rank's process; a rank
that dies ends the others, as for local ranks. The actors belong to this driver: if the launcher dies, Ray ends
them, and their worker processes die with them (parent-death signal).

What a real cluster needs (docs/TEAM.md): the studio at the same path on every node, rank 0's node reachable from
the others on MASTER_ADDR (the node's address as Ray knows it), the run folder on storage every node shares (each
rank reads the config and writes its checkpoint shards there), and the database URL every node reaches.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import threading
from collections import deque

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

TAIL_LINES = 15
PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")
PLACEMENT_TIMEOUT_S = float(os.environ.get("FTS_RAY_PLACEMENT_TIMEOUT_S", "300") or 300)
_GROUPS: list = []  # the placement groups this launcher holds


def _die_with_parent() -> None:  # in the rank's process between fork and exec: it never outlives its actor
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class PlacementError(RuntimeError):
    """The cluster cannot hold the run's ranks as asked (not enough nodes or devices)."""


@ray.remote(num_cpus=0)
class RankActor:
    """Runs one rank's worker process on the node of its bundle and reports on it."""

    def __init__(self) -> None:
        self.proc = None
        self.lines: list[str] = []  # rank 0: new lines, taken by each poll
        self.tail: deque = deque(maxlen=TAIL_LINES)
        self.lock = threading.Lock()

    def where(self) -> dict:
        node_id = ray.get_runtime_context().get_node_id()
        ip = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id),  # its --node-ip-address
                  ray.util.get_node_ip_address())
        return {"node_id": node_id, "ip": ip, "host": socket.gethostname()}

    def free_port(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return int(s.getsockname()[1])

    def start(self, argv: list[str], env: dict, cwd: str, stream: bool) -> int:
        import subprocess

        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,  # noqa: S603
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.reader.start()
        return self.proc.pid

    def _read(self, stream: bool) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with self.lock:
                self.tail.append(line)
                if stream:
                    self.lines.append(line)

    def poll(self) -> tuple[int | None, list[str], int]:
        """(exit code or None, new output lines when streamed, RSS bytes)."""
        from core.runs.memory import tree_rss_bytes

        code = self.proc.poll()
        if code is not None:
            self.reader.join(timeout=2)  # its last lines
        with self.lock:
            lines, self.lines = self.lines, []
        return code, lines, 0 if code is not None else (tree_rss_bytes(self.proc.pid) or 0)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()

    def tail_lines(self) -> list[str]:
        with self.lock:
            return list(self.tail)


class RayRank:
    """The launcher's side of one rank on the cluster: the same methods as core.runs.ranks.LocalRank."""

    def __init__(self, rank: int, actor, where: dict) -> None:
        self.rank, self.actor, self.pid = rank, actor, None
        self.node = f"{where['host']} ({where['node_id'][:8]})"
        self.code: int | None = None
        self._rss = 0

    def poll(self) -> int | None:
        if self.code is not None:
            return self.code
        try:
            code, lines, self._rss = ray.get(self.actor.poll.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            print(f"ranks: rank {self.rank} on {self.node} is lost ({type(exc).__name__}: its node went away?)",
                  flush=True)
            self.code = -signal.SIGKILL
            return self.code
        for line in lines:
            print(line, flush=True)
        self.code = code
        return code

    def rss(self) -> int:
        return self._rss

    def signal(self, sig: int) -> None:
        if self.code is None:
            self.actor.signal.remote(sig)

    def kill_and_wait(self) -> None:
        try:
            ray.get(self.actor.kill.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass

    def tail_lines(self) -> list[str]:
        try:
            return ray.get(self.actor.tail_lines.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return []


def bundle() -> dict:
    gpus = os.environ.get("FTS_RAY_NUM_GPUS", "").strip()
    return {"CPU": 1.0} if gpus in ("0", "0.0") else {"GPU": 1.0}


def placement() -> str:
    how = (os.environ.get("FTS_RAY_PLACEMENT") or "PACK").strip().upper()
    if how not in PLACEMENTS:
        raise PlacementError(f"FTS_RAY_PLACEMENT must be one of {', '.join(PLACEMENTS)} (got {how!r})")
    return how


def start_on_ray(processes: int, argv: list[str], environment) -> tuple[list[RayRank], str]:
    """Reserve the bundles, start one actor per rank on its bundle, then the ranks' processes (``environment(base,
    rank, world, port)``: a rank's variables, core.runs.ranks.rank_environment). (ranks, rendezvous)."""
    from core.config import REPO_ROOT

    if not ray.is_initialized():
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        ray.init(address="auto", logging_level="WARNING", log_to_driver=False)
        for sig, handler in handlers.items():  # a driver's SIGTERM exits at once: a stop must reach the ranks
            signal.signal(sig, handler)
    how, each = placement(), bundle()
    group = placement_group([dict(each) for _ in range(processes)], strategy=how)
    try:
        ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise PlacementError(f"the Ray cluster could not place {processes} ranks of {each} ({how}) within "
                             f"{PLACEMENT_TIMEOUT_S:.0f} s (free now: {ray.available_resources()}): add nodes or "
                             "devices, or use fewer processes") from None
    actors = [RankActor.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        group, placement_group_bundle_index=k)).remote() for k in range(processes)]
    wheres = ray.get([a.where.remote() for a in actors], timeout=120)
    master, port = wheres[0]["ip"], ray.get(actors[0].free_port.remote(), timeout=60)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    node_ids = list(dict.fromkeys(w["node_id"] for w in wheres))  # nodes in the order of their first rank
    ranks = [RayRank(k, a, w) for k, (a, w) in enumerate(zip(actors, wheres))]
    for k, r in enumerate(ranks):
        here = [i for i, w in enumerate(wheres) if w["node_id"] == wheres[k]["node_id"]]
        env = environment(base, k, processes, port) | {
            "MASTER_ADDR": master, "GROUP_RANK": str(node_ids.index(wheres[k]["node_id"])),
            "LOCAL_RANK": str(here.index(k)), "LOCAL_WORLD_SIZE": str(len(here)),
            "FTS_RANK_THREADS": str(max(1, int(each.get("CPU", 0)))) if "CPU" in each else ""}
        r.pid = ray.get(r.actor.start.remote(argv, env, str(REPO_ROOT), k == 0), timeout=60)
    _GROUPS.append(group)
    return ranks, f"{master}:{port} (Ray placement group of {processes} x {each}, {how})"


def release() -> None:
    """Give the ranks' bundles back (the driver's end frees them too)."""
    while _GROUPS:
        try:
            remove_placement_group(_GROUPS.pop())
        except Exception:  # noqa: BLE001, S110
            pass
