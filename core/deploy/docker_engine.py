"""The Docker engine, through the ``docker`` Python SDK (imported lazily, so everything else works without it): is one
reachable, pull an image with progress (or say in one line why not and how to load it on an offline host), start a
:class:`~core.deploy.containers.ServeSpec`'s container, read its state, stop it."""
from __future__ import annotations

import os
import re
from urllib.parse import urlparse

from core.deploy.containers import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    LABEL_WORKSPACE,
    TARGETS,
    ServeSpec,
    docker_command_text,
    docker_run_args,
    plan_for,
    studio_labels,
)
from core.estimate.serving import LaunchError

DOCKER_SDK_PIN = "docker==7.2.0"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def _docker_address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def docker_engine() -> tuple[object | None, str]:
    """``(client, "")`` when a Docker engine answers a ping (``DOCKER_HOST`` or the local socket), else ``(None,
    reason)`` with the reason worded for a person."""
    try:
        import docker
        from docker.errors import DockerException
        from requests.exceptions import RequestException
    except ImportError:
        return None, f"the docker Python SDK is not installed (pip install {DOCKER_SDK_PIN})"
    address = _docker_address()
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except (DockerException, RequestException, OSError) as exc:
        return None, (f"no Docker engine reachable at {address}: {exc}; run the command on a GPU host with Docker "
                      "and the NVIDIA Container Toolkit")
    return client, ""


def _engine_host() -> str:
    """Where the published port answers: the DOCKER_HOST machine for tcp:// or ssh:// engines, else this one."""
    address = _docker_address()
    if address.startswith(("tcp://", "ssh://")):
        return urlparse(address).hostname or "127.0.0.1"
    return "127.0.0.1"


# ---- images: pulled with progress, or a one-line why and how to load one on an offline host ------------------------

def image_registry(image: str) -> str:
    """Where an image reference is pulled from: its registry host (``ghcr.io``), Docker Hub (``docker.io``) when the
    reference names none."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _repo_and_tag(image: str) -> tuple[str, str]:
    if "@" in image:  # pinned by digest
        repo, digest = image.split("@", 1)
        return repo, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"


def pull_failure(image: str, raw) -> str:
    """One line for an image that could not be pulled: which image, from where, why (in words, not the engine's
    500), and how to load it on a host without access to the registry."""
    registry = image_registry(image)
    text = " ".join(str(raw or "").split())
    low = text.lower()
    if any(k in low for k in ("no such host", "name resolution", "temporary failure in name", "server misbehaving",
                              "could not resolve")):
        why = f"{registry} cannot be resolved from the Docker host (no network or no DNS there)"
    elif any(k in low for k in ("i/o timeout", "timeout", "deadline exceeded")):
        why = f"{registry} did not answer in time"
    elif any(k in low for k in ("connection refused", "network is unreachable", "no route to host")):
        why = f"{registry} is unreachable from the Docker host"
    elif any(k in low for k in ("unauthorized", "denied", "authentication required")):
        why = f"{registry} refused access (docker login {registry} on the Docker host)"
    elif "manifest unknown" in low or "not found" in low:
        why = f"{registry} has no image or tag by that name"
    else:
        why = text[-160:] or "the engine gave no reason"
    tar = re.sub(r"[^A-Za-z0-9._-]+", "-", image.rsplit("/", 1)[-1]) + ".tar"
    return (f"the image {image} could not be pulled from {registry}: {why}. To load it on a host without access to "
            f"{registry}: on a machine with access run docker pull {image} && docker save {image} -o {tar}, copy "
            f"{tar} over, then docker load -i {tar}")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


class PullProgress:
    """Folds the engine's pull events (one per layer and state) into one line: bytes downloaded of the layers' sizes
    known so far, and layers done."""

    DONE = ("Pull complete", "Already exists")

    def __init__(self, image: str):
        self.image = image
        self.layers: dict[str, dict] = {}

    def add(self, event: dict) -> None:
        lid = event.get("id")
        status = str(event.get("status") or "")
        if not lid or lid == _repo_and_tag(self.image)[1] or status.startswith(("Pulling from", "Digest", "Status")):
            return
        layer = self.layers.setdefault(lid, {"current": 0, "total": 0, "done": False})
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            layer["current"], layer["total"] = int(detail.get("current") or 0), int(detail["total"])
        elif status in ("Download complete", "Verifying Checksum", "Extracting") and layer["total"]:
            layer["current"] = layer["total"]
        if status in self.DONE:
            layer["done"] = True
            layer["current"] = layer["total"]

    def line(self) -> str:
        got = sum(v["current"] for v in self.layers.values())
        size = sum(v["total"] for v in self.layers.values())
        done = sum(v["done"] for v in self.layers.values())
        where = f"pulling {self.image} from {image_registry(self.image)}"
        if not size:
            return f"{where}: asking the registry" + (f" ({len(self.layers)} layers)" if self.layers else "")
        layers = f"{done} of {len(self.layers)} layers done"
        if any(not v["total"] and not v["done"] for v in self.layers.values()):  # some sizes not known yet
            return f"{where}: {_gb(got)} of at least {_gb(size)}, {layers}"
        return f"{where}: {_gb(got)} of {_gb(size)} ({100 * got / size:.0f} %), {layers}"


def ensure_image(client, image: str, on_progress=None, every_s: float = 1.0) -> bool:
    """Pull ``image`` unless the engine has it, calling ``on_progress(line)`` at most every ``every_s`` seconds and
    once at the end. Returns whether it pulled; raises :class:`LaunchError` with :func:`pull_failure`'s line."""
    from docker.errors import APIError, DockerException, ImageNotFound
    from requests.exceptions import RequestException

    try:
        client.images.get(image)
        return False
    except ImageNotFound:
        pass
    except (APIError, DockerException, RequestException) as exc:
        raise LaunchError(f"the Docker engine could not look up {image}: {' '.join(str(exc).split())[:200]}") from None
    import threading

    repo, tag = _repo_and_tag(image)
    progress = PullProgress(image)
    lock, done = threading.Lock(), threading.Event()
    said = [""]

    def report() -> None:  # the newest state, when it changed (events come in bursts; a burst's end is reported too)
        with lock:
            line = progress.line()
        if line != said[0]:
            said[0] = line
            on_progress(line)

    flusher = None
    if on_progress:
        report()

        def flush() -> None:
            while not done.wait(every_s):
                report()

        flusher = threading.Thread(target=flush, daemon=True, name="fts-pull-progress")
        flusher.start()
    try:
        for event in client.api.pull(repo, tag=tag, stream=True, decode=True):
            if not isinstance(event, dict):
                continue
            if event.get("error") or event.get("errorDetail"):
                raise LaunchError(pull_failure(image, event.get("error") or event.get("errorDetail")))
            with lock:
                progress.add(event)
    except APIError as exc:
        raise LaunchError(pull_failure(image, getattr(exc, "explanation", None) or exc)) from None
    except (DockerException, RequestException) as exc:
        raise LaunchError(pull_failure(image, exc)) from None
    finally:
        done.set()
        if flusher is not None:
            flusher.join(timeout=5)  # its last word comes before the pull's end
    try:
        client.images.get(image)
    except (ImageNotFound, APIError, DockerException, RequestException):
        raise LaunchError(pull_failure(image, "the pull ended but the engine does not have the image")) from None
    if on_progress:
        on_progress(f"pulled {image} ({_gb(sum(v['total'] for v in progress.layers.values()))})")
    return True


def launch_container(spec: ServeSpec, target: str, image: str | None = None, *, on_progress=None,
                     proceed=None, deployment_id: int | None = None) -> dict:
    """Start ``target`` (``tgi`` | ``vllm`` | ``container``) for ``spec`` through the docker SDK, detached, on the
    host's network (the server binds 127.0.0.1:PORT), the model mounted read-only, with the plan's memory and CPU
    limits and the studio's labels (``deployment_id`` among them); TGI / vLLM with every GPU visible. The first
    launch pulls the image (TGI is ~10 GB) and blocks until it has, reporting ``on_progress(line)``; ``proceed()`` is
    asked after the pull (False: stop there, nothing started). Returns ``{"container_id", "name", "url"}`` (url ends
    in ``/v1``); raises :class:`LaunchError` — with the command to run on a GPU host when no engine answers, with
    one line saying which image could not be pulled from where and how to load it offline."""
    if target not in TARGETS:
        raise LaunchError(f"target must be one of {', '.join(TARGETS)} (got {target!r})")
    plan = plan_for(target, spec, image)
    command = docker_command_text(docker_run_args(plan))
    client, reason = docker_engine()
    if client is None:
        raise LaunchError(f"{reason}:\n{command}")
    environment = {}
    for name in plan.env_names:
        value = os.environ.get(name)
        if not value:
            raise LaunchError(f"{name} is to be passed to the container but is not set in this process's environment:"
                              f" export {name} before starting the studio, or untick it")
        environment[name] = value  # sent to the engine only, never written down
    from docker.errors import APIError, DockerException, ImageNotFound
    from docker.types import DeviceRequest

    if target == "container":  # the studio's image is built, not pulled
        try:
            client.images.get(plan.image)
        except ImageNotFound:
            raise LaunchError(f"the studio's image {plan.image} is not on this Docker engine: build it with `make "
                              "image` (or set FTS_STUDIO_IMAGE to the name you built it under)") from None
        except (APIError, DockerException) as exc:
            raise LaunchError(f"the Docker engine could not look up {plan.image}: {exc}") from None
    else:
        ensure_image(client, plan.image, on_progress)
    if proceed is not None and not proceed():
        raise LaunchError("stopped before the container started")

    labels = dict(plan.labels)
    if deployment_id is not None:
        labels[LABEL_DEPLOYMENT] = str(deployment_id)
    kwargs = dict(command=list(plan.server_args), detach=True, name=plan.name, network_mode="host",
                  volumes={host: {"bind": inside, "mode": "ro"} for host, inside in plan.mounts},
                  environment=environment, labels=labels, mem_limit=plan.memory_bytes, nano_cpus=plan.nano_cpus)
    if plan.gpu:
        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]  # = --gpus all
        if plan.ipc_host:
            kwargs["ipc_mode"] = "host"
        else:
            kwargs["shm_size"] = "1g"
    try:
        container = client.containers.run(plan.image, **kwargs)
    except ImageNotFound as exc:  # the engine lost it between the pull and the start
        raise LaunchError(f"{pull_failure(plan.image, getattr(exc, 'explanation', None) or exc)}\n"
                          f"the command:\n{command}") from None
    except APIError as exc:
        text = str(exc)
        if "Conflict" in text or getattr(exc, "status_code", None) == 409:
            hint = f"a container named {plan.name} exists already: stop it (docker rm -f {plan.name}) or change port"
        elif "capabilities" in text and "gpu" in text:
            hint = "the engine has no GPU support: install the NVIDIA Container Toolkit on the host and restart Docker"
        else:
            hint = "the engine refused the container"
        raise LaunchError(f"{hint} ({text.splitlines()[0][:300]}); the command:\n{command}") from None
    except DockerException as exc:
        raise LaunchError(f"the Docker engine failed: {exc}; the command:\n{command}") from None
    return {"container_id": container.id, "name": container.name,
            "url": f"http://{_engine_host()}:{plan.port}/v1"}


def container_status(container_id: str) -> str | None:
    """The container's state (``running``, ``exited``, ``created``, ...); ``"removed"`` when the engine no longer
    knows it; None when no engine answers (nothing can be said)."""
    client, _reason = docker_engine()
    if client is None or not container_id:
        return None
    from docker.errors import DockerException, NotFound
    from requests.exceptions import RequestException

    try:
        return str(client.containers.get(container_id).status)
    except NotFound:
        return "removed"
    except (DockerException, RequestException):
        return None


def container_logs(container_id: str, tail: int = 200) -> str | None:
    """The container's output (stdout and stderr, the last ``tail`` lines); None when no engine or no such
    container."""
    client, _reason = docker_engine()
    if client is None or not container_id:
        return None
    from docker.errors import DockerException, NotFound
    from requests.exceptions import RequestException

    try:
        raw = client.containers.get(container_id).logs(stdout=True, stderr=True, tail=tail)
    except NotFound:
        return None
    except (DockerException, RequestException):
        return None
    return raw.decode("utf-8", errors="replace")


def stop_container(container_id: str, keep_logs=None) -> None:
    """Stop and remove the container; ``keep_logs(text)`` first receives its output (the deployment keeps it in its
    log). Nothing to do if the engine no longer knows it."""
    client, reason = docker_engine()
    if client is None:
        raise LaunchError(f"{reason}; stop it on its host with: docker rm -f {container_id}")
    from docker.errors import DockerException, NotFound
    from requests.exceptions import RequestException

    try:
        container = client.containers.get(container_id)
        container.stop(timeout=30)
        if keep_logs is not None:
            keep_logs(container.logs(stdout=True, stderr=True, tail=500).decode("utf-8", errors="replace"))
        container.remove(force=True, v=True)  # with its anonymous volumes (the image's /data)
    except NotFound:
        return
    except (DockerException, RequestException) as exc:
        raise LaunchError(f"could not stop container {container_id[:12]}: {exc}") from None


def studio_containers() -> list[dict]:
    """This workspace's containers the studio started, running or not: ``{"id", "name", "status", "deployment"}``
    (the deployment row's id from its label, None when it has none). Empty when no engine answers."""
    client, _reason = docker_engine()
    if client is None:
        return []
    from docker.errors import DockerException
    from requests.exceptions import RequestException

    workspace = dict(studio_labels())[LABEL_WORKSPACE]
    try:
        found = client.containers.list(all=True, filters={"label": [f"{LABEL_MANAGED}=finetune-studio",
                                                                     f"{LABEL_WORKSPACE}={workspace}"]})
    except (DockerException, RequestException):
        return []
    out = []
    for c in found:
        dep = (c.labels or {}).get(LABEL_DEPLOYMENT, "")
        out.append({"id": c.id, "name": c.name, "status": c.status, "deployment": int(dep) if dep.isdigit() else None})
    return out


def remove_container(container_id: str) -> None:
    """Remove a container (running or not) — an orphan the studio no longer tracks."""
    client, reason = docker_engine()
    if client is None:
        raise LaunchError(reason)
    from docker.errors import DockerException, NotFound
    from requests.exceptions import RequestException

    try:
        client.containers.get(container_id).remove(force=True, v=True)  # and its anonymous volume (/data)
    except NotFound:
        return
    except (DockerException, RequestException) as exc:
        raise LaunchError(f"could not remove container {container_id[:12]}: {exc}") from None
