"""The ways a job can die become messages a person can act on."""
import errno
import signal

from core.runs.errors import DiskFullError, describe_exception, disk_full_message, is_disk_full
from core.runs.supervise import describe_death
from core.train.advice import out_of_memory_advice
from storage import RunStatus

GB = 1024**3


def test_disk_full_in_every_shape_says_so():
    shapes = [
        OSError(errno.ENOSPC, "No space left on device", "/ws/runs/3/checkpoints/checkpoint-50"),
        RuntimeError("SafetensorError: Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                     "\"No space left on device\" }) (os error 28)"),
        Exception("(sqlite3.OperationalError) database or disk is full"),
    ]
    for exc in shapes:
        assert is_disk_full(exc)
        msg = describe_exception(exc, disk_free=12 * 1024**2, disk_needed=38 * 1024**2)
        assert msg.startswith("disk full: 12 MB free in the workspace; a checkpoint of this run needs ~38 MB")
        assert "resume" in msg
    assert describe_exception(DiskFullError(disk_full_message(5 * 1024**2, None))).startswith("disk full: 5 MB free")


def test_cuda_and_cpu_out_of_memory_are_recognised():
    cuda = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 16386304 bytes")
    advice = out_of_memory_advice({"dataset": "x", "batch_size": 8, "max_length": 2048}, 1 * GB)
    for exc in (cuda, cpu, MemoryError()):
        msg = describe_exception(exc, oom_advice=advice)
        assert msg.startswith("out of memory:") and "gradient_checkpointing" in msg and "QLoRA" in msg


def test_oom_advice_is_the_estimators_for_that_run():
    advice = out_of_memory_advice({"dataset": "x", "method": "full", "batch_size": 16, "max_length": 2048}, 2 * GB)
    assert advice.startswith("The Estimate tab puts this run's peak at ")
    assert "to fit 2.0 GB:" in advice  # the changes that make it fit the memory it had
    assert "batch_size" in advice  # and the generic advice after
    assert out_of_memory_advice({"not": "a config"}, GB).startswith("Lower batch_size")  # never raises


def test_other_errors_keep_their_type_and_text():
    assert describe_exception(ValueError("row 17: 'output' is empty")) == "ValueError: row 17: 'output' is empty"


def test_how_a_worker_died_is_named():
    status, msg = describe_death(-signal.SIGKILL, peak=int(21.8 * GB), limit=24 * GB, limit_source="of the machine",
                                 oom_kills=1, advice="Lower batch_size.")
    assert status == RunStatus.failed
    assert msg.startswith("killed by signal 9, the kernel's out-of-memory killer: peak RSS 21.8 GB of 24.0 GB")
    status, msg = describe_death(-signal.SIGKILL, peak=int(21.8 * GB), limit=24 * GB, limit_source="x",
                                 oom_kills=0, advice="")
    assert msg.startswith("killed by signal 9, likely out of memory: peak RSS 21.8 GB of 24.0 GB")
    status, msg = describe_death(-signal.SIGKILL, peak=GB, limit=24 * GB, limit_source="x", oom_kills=0, advice="")
    assert "so probably not out of memory" in msg
    assert describe_death(-signal.SIGTERM, peak=None, limit=None, limit_source="", oom_kills=0,
                          advice="")[0] == RunStatus.interrupted
    assert "SIGSEGV" in describe_death(-signal.SIGSEGV, peak=None, limit=None, limit_source="", oom_kills=0,
                                       advice="")[1]
    assert "code 3" in describe_death(3, peak=None, limit=None, limit_source="", oom_kills=0, advice="")[1]
