"""Shared fixtures: every test gets its own workspace + SQLite file; the converted default model is shared.

The embedded SmolLM2 is converted from GGUF once into ``FTS_TEST_MODELS_DIR`` (default: the repo's
``workspace/models``, which `make run` uses too), so only the first test session pays the ~25 s conversion.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_MODELS = Path(os.environ.get("FTS_TEST_MODELS_DIR", REPO / "workspace" / "models")).resolve()
FIXTURES = Path(__file__).resolve().parent / "fixtures"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# This machine may run a Docker engine (tests/test_container.py starts one); every other test sees none, as on a host
# without one (a test of the engine path names its own: tests/fake_docker.py, or DOCKER_ENGINE in test_container)
NO_ENGINE = "unix:///nonexistent/fts-tests-no-docker-engine.sock"
# (kept in a variable of its own: pytest-xdist's test processes inherit the DOCKER_HOST set below)
os.environ.setdefault("FTS_TEST_DOCKER_ENGINE", os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
DOCKER_ENGINE = os.environ["FTS_TEST_DOCKER_ENGINE"]
os.environ["DOCKER_HOST"] = NO_ENGINE
os.environ["FTS_MODELS_DIR"] = str(SHARED_MODELS)
# trackio's folder is read when TRL imports it (the warm worker preloads TRL): one for the whole suite, so a test's
# workspace does not change the warm worker's environment (jobs otherwise get their workspace's trackio/)
os.environ.setdefault("TRACKIO_DIR", str(Path(tempfile.gettempdir()) / f"fts-tests-trackio-{os.getuid()}"))


os.environ.setdefault("FTS_WARM_IDLE_MIN", "10")  # the warm worker of a test session does not outlive it long
if os.environ.get("PYTEST_XDIST_WORKER"):
    # several test processes share the machine's cores (`make test` runs 2). OpenMP's threads wait passively at a
    # barrier instead of spinning (libgomp spins by default: two trainings with two threads each on 2 cores spun at
    # every barrier, 55 s a step instead of ~1.7 s), so every process and its jobs keep all the cores' threads and
    # the cores go to whichever has work. It is read when torch loads, in these processes and all they start.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if os.environ.get("FTS_TEST_THREADS"):  # or a fixed share of threads per process
        os.environ.setdefault("OMP_NUM_THREADS", os.environ["FTS_TEST_THREADS"])
        os.environ.setdefault("FTS_WORKER_THREADS", os.environ["FTS_TEST_THREADS"])


# ---- running in parallel (`FTS_TEST_PROCESSES=N make test`: pytest-xdist, N processes) --------------------------
# Tests that read the session's trained demo run go to one process (it trains it once; they run in order there); the
# rest go a module at a time (a module's own fixtures are built once); modules that share a session service (the
# PostgreSQL cluster) go together. The longest groups start first, so that no process is left with a long one at the
# end (each group's seconds in a 2-process run, bench/RESULTS.md; a group missing here just goes later). The
# grouping only saves time: a test in another process would build what it needs there.
# (xdist's own --dist loadgroup renames test ids, which pytest 9 no longer lets a plugin do: the test processes write
# each test's group to a file, and the scheduler below reads it.)
GROUP_OF_MODULE = {"test_runs_core": "postgres", "test_postgres": "postgres"}
GROUP_SECONDS = {"demo": 578, "test_faults": 193, "test_ray": 193, "test_app": 142, "test_grpo": 128,
                 "test_container": 102, "postgres": 102, "test_space_quickstart": 102, "test_preference": 98,
                 "test_jobs": 92, "test_api_walk": 87, "test_hostile": 65, "test_sweep": 54, "test_gguf_export": 50,
                 "test_distributed": 50, "test_gpu_check": 49, "test_shared_studio": 39, "test_manage_runs": 35,
                 "test_base_models": 31, "test_multiple_choice": 30, "test_users": 27, "test_trackers": 23,
                 "test_generate": 22, "test_warm_worker": 21, "test_fuzz_importer": 20, "test_native_benchmarks": 19,
                 "test_data_ui": 18, "test_judge": 17, "test_storage": 15}  # 2 processes, 2026-12-07 (RESULTS.md)


def _group(item) -> str:
    if "demo_run" in item.fixturenames:
        return "demo"
    module = item.module.__name__.rsplit(".", 1)[-1]
    return GROUP_OF_MODULE.get(module, module)


def pytest_configure(config):
    if getattr(config.option, "dist", "no") == "loadgroup" and not os.environ.get("PYTEST_XDIST_WORKER"):
        import tempfile

        fd, path = tempfile.mkstemp(prefix="fts-test-groups-", suffix=".json")
        os.close(fd)
        os.environ["FTS_TEST_GROUPS"] = path  # the test processes, started after this, inherit it


def pytest_unconfigure(config):
    path = os.environ.get("FTS_TEST_GROUPS")
    if path and not os.environ.get("PYTEST_XDIST_WORKER"):
        with contextlib.suppress(OSError):
            os.unlink(path)


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a serial run keeps the usual order
    order = {g: i for i, g in enumerate(dict.fromkeys(_group(it) for it in items))}
    items.sort(key=lambda it: (-GROUP_SECONDS.get(_group(it), 0), order[_group(it)]))
    path = os.environ.get("FTS_TEST_GROUPS")
    if path and os.environ.get("PYTEST_XDIST_WORKER") == "gw0":  # every process collects the same tests
        import json

        tmp = f"{path}.{os.getpid()}"
        Path(tmp).write_text(json.dumps({it.nodeid: _group(it) for it in items}))
        os.replace(tmp, path)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: without it installed, this is never called
def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup with the groups above: a group is one unit of work, sent whole to one process."""
    if getattr(config.option, "dist", "no") != "loadgroup":
        return None
    import json

    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        groups: dict | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                with contextlib.suppress(OSError, ValueError):
                    self.groups = json.loads(Path(os.environ["FTS_TEST_GROUPS"]).read_text() or "{}")
            return (self.groups or {}).get(nodeid) or nodeid.split("::", 1)[0]

    return ByGroup(config, log)


@pytest.fixture(scope="session", autouse=True)
def warm_worker(tmp_path_factory):
    """The warm worker (core/runs/warm.py, warm_server.py) for the suite's environment, started at once: every job
    the tests start forks from it with the libraries imported (tests that change a variable the libraries read start
    their own)."""
    from core.runs import warm
    from core.runs.backends import job_environment

    if os.environ.get("PYTEST_XDIST_WORKER"):  # each test process its own warm workers (its own cap of servers)
        run_dir = tmp_path_factory.getbasetemp() / "run"
        run_dir.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(run_dir)
    env = job_environment()
    warm.ensure(env)
    yield
    warm.stop(env, timeout_s=30)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh workspace (runs, datasets, SQLite DB) for one test; subprocesses inherit it via the environment."""
    from storage import reset_engines

    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.setenv("FTS_WORKSPACE", str(ws))
    monkeypatch.setenv("FTS_MODELS_DIR", str(SHARED_MODELS))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    reset_engines()
    yield ws
    reset_engines()


@pytest.fixture(scope="session")
def default_model_dir():
    from core.models import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> str:
    """A random Llama of ~10 MB with the embedded model's tokenizer and chat template (tests/base_models.py): for
    tests of the job machinery — queue, stop, resume, faults, reconcile — where what the model learns is not the
    point. A step takes milliseconds instead of the default model's ~0.7 s."""
    from tests.base_models import make_tiny_chat_model

    return str(make_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "tiny-chat", Path(default_model_dir)))


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from core.models import load_tokenizer

    return load_tokenizer(str(default_model_dir))


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@contextlib.contextmanager
def workspace_env(ws: Path):
    """Point this process (and the workers it starts) at workspace ``ws`` with its own SQLite DB, for a fixture wider
    than one test (monkeypatch is per test); the environment is restored afterwards."""
    from storage import reset_engines

    saved = {k: os.environ.get(k) for k in ("FTS_WORKSPACE", "DATABASE_URL")}
    os.environ["FTS_WORKSPACE"] = str(ws)
    os.environ.pop("DATABASE_URL", None)
    reset_engines()
    try:
        yield ws
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_engines()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, default_model_dir):
    """A short real LoRA run on the demo task (support message -> JSON), trained once per test session in its own
    workspace: ``{"ws", "run_id", "dataset_id", "adapter"}``. About 40 s of training on 2 cores."""

    ws = tmp_path_factory.mktemp("demo") / "ws"
    ws.mkdir()
    with workspace_env(ws):
        from core import quickstart, runs

        # the quick start's own stages and settings: 160 demo rows (144 train / 16 validation), 24 LoRA steps
        ds = quickstart.load_demo()
        run = runs.wait_for(quickstart.start_training().id, timeout_s=1200)
        assert run.status == "succeeded", runs.log_tail(run.id)
        info = {"ws": ws, "run_id": run.id, "dataset_id": ds.id, "adapter": run.adapter_path}
    return info


@pytest.fixture
def demo_ws(demo_run, monkeypatch):
    """Point this test at the trained demo run's workspace."""
    from storage import reset_engines

    monkeypatch.setenv("FTS_WORKSPACE", str(demo_run["ws"]))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    reset_engines()
    yield demo_run
    reset_engines()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def wait_until(pred, timeout_s: float, poll_s: float = 0.1):
    """Poll ``pred`` until it returns something truthy (returned) or ``timeout_s`` passes (TimeoutError)."""
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError("condition not reached")


def stop_with_checkpoint(run_id: int):
    """Stop a running training run as a person would (``runs.stop``): it must end ``stopped`` with a checkpoint to
    resume from. Returns ``(the stopped run, that checkpoint's step)``."""
    from core import runs
    from core.runs.paths import checkpoint_step

    stopped = runs.stop(run_id, timeout_s=120)
    assert stopped.status == "stopped" and stopped.resume_from_checkpoint, runs.log_tail(run_id)
    return stopped, checkpoint_step(stopped.resume_from_checkpoint)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_free_port = free_port


def launch_app(log_path: Path, *, script: str = "app.py", env: dict | None = None, timeout_s: float = 180,
               any_answer: bool = False, **env_extra):
    """Start the real dashboard (``python app.py``, or another launcher script in the repository) on a free loopback
    port; wait until it answers 200 (``any_answer``: any HTTP answer, e.g. a login page). Returns ``(proc, url)``;
    the caller stops it. An app that exits or never answers raises with its log's tail."""
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    port = free_port()
    env = {**(os.environ if env is None else env), "PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", **env_extra}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, script], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("app exited: " + Path(log_path).read_text()[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except urllib.error.HTTPError:
            if any_answer:
                return proc, url
            time.sleep(0.5)
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("app did not start: " + Path(log_path).read_text()[-3000:])


def stop_app(proc, timeout_s: float = 20) -> None:
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:  # a stuck app is killed
        proc.kill()
        proc.wait()


@pytest.fixture
def start_app():
    """Start the real dashboard (`python app.py`) on a free loopback port with the current environment's workspace;
    returns its URL. Every app started is stopped after the test."""
    procs = []

    def start(log_path: Path, **env_extra) -> str:
        proc, url = launch_app(log_path, **env_extra)
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        stop_app(proc)


@pytest.fixture
def browser():
    """Headless Debian Chromium through Playwright."""
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


# ---- PostgreSQL: a throwaway cluster for the team-database tests (issue 12) ------------------------------------
PG_BIN = Path(os.environ.get("FTS_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PgCluster:
    """One PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free loopback port, as the ``postgres`` user when the
    tests run as root (initdb refuses root). Each test gets its own database: :meth:`new_database`."""

    def __init__(self) -> None:
        import shutil
        import subprocess
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="fts-pg-"))
        self.data = self.root / "data"
        self.data.mkdir()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            for p in (self.root, self.data):
                shutil.chown(p, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = _free_port()
        subprocess.run([*self.as_user, str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        self.ctl("start")

    def ctl(self, action: str, *extra: str) -> None:
        import subprocess

        opts = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off"
        subprocess.run([*self.as_user, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts,
                        "-l", str(self.root / "server.log"), "-w", "-t", "60", action, *extra], check=True,
                       capture_output=True)

    def new_database(self) -> str:
        import uuid

        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        import shutil

        try:
            self.ctl("stop", "-m", "immediate")
        except Exception:  # noqa: BLE001, S110 - already stopped
            pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster():
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"needs PostgreSQL 15 ({PG_BIN}; Debian's postgresql package)")
    pytest.importorskip("psycopg")
    cluster = PgCluster()
    yield cluster
    cluster.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db_workspace(request, tmp_path, monkeypatch):
    """A fresh workspace on SQLite (its own file) or on PostgreSQL (its own database on the session's cluster)."""
    from storage import reset_engines

    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.setenv("FTS_WORKSPACE", str(ws))
    monkeypatch.setenv("FTS_MODELS_DIR", str(SHARED_MODELS))
    if request.param == "postgres":
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("pg_cluster").new_database())
    else:
        monkeypatch.delenv("DATABASE_URL", raising=False)
    reset_engines()
    yield ws
    reset_engines()


# ---- Ray: a real head on loopback for the cluster-backend tests (issue 12) ---------------------------------------

class RayHead:
    """``ray start --head --block`` on free loopback ports (CPU only, no usage stats) in its own process group; the
    job API at :attr:`address`. Stopped with its group (``ray stop`` would stop every Ray on the machine)."""

    def __init__(self, num_cpus: int = 2) -> None:
        import shutil
        import subprocess
        import sys
        import tempfile
        import urllib.request

        self.tmp = Path(tempfile.mkdtemp(prefix="fts-ray-", dir="/tmp"))  # short: Ray's unix sockets live here
        self.port, self.dash = _free_port(), _free_port()
        self.address = f"http://127.0.0.1:{self.dash}"
        ray = Path(sys.executable).parent / "ray"
        # a node that is gone (test_ray's second node, stopped) is seen gone in seconds, not Ray's ~15-30 s
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_health_check_period_ms="1000",
                   RAY_health_check_timeout_ms="2000", RAY_health_check_failure_threshold="4")
        self.log = open(self.tmp / "head.log", "wb")
        self.proc = subprocess.Popen(
            [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dash), "--num-cpus", str(num_cpus),
             "--num-gpus", "0", "--include-dashboard", "true", "--disable-usage-stats", "--temp-dir", str(self.tmp)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: self.proc.poll() is not None or self._answers(urllib.request), 90, poll_s=0.5)
        except TimeoutError:
            self.close()
            raise
        if self.proc.poll() is not None:
            text = (self.tmp / "head.log").read_text(errors="replace")[-2000:]
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise RuntimeError(f"ray head did not start:\n{text}")

    def _answers(self, request) -> bool:
        try:
            with request.urlopen(self.address + "/api/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def close(self) -> None:
        import shutil
        import signal

        try:  # `ray start --block` shuts its cluster down on SIGINT (it ignores SIGTERM); the session's end need
            # not wait for a slow one (seen taking over 20 s): its group goes with SIGKILL after a few seconds
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(5)
        except (ProcessLookupError, OSError):
            pass
        except Exception:  # noqa: BLE001 - a head that did not stop
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head():
    pytest.importorskip("ray")
    head = RayHead()
    yield head
    head.close()


@pytest.fixture
def on_ray(ray_head, monkeypatch):
    """Jobs of this test go through the Ray backend to the session's head (CPU: they ask for no GPU)."""
    from core.runs import scheduler

    monkeypatch.setenv("FTS_JOB_BACKEND", "ray")
    monkeypatch.setenv("RAY_ADDRESS", ray_head.address)
    monkeypatch.setenv("FTS_RAY_NUM_GPUS", "0")
    monkeypatch.setattr(scheduler, "_unavailable_until", 0.0)
    return ray_head
