"""The worker turns the ways a run can die into messages a person can act on."""
import errno

from core.train.worker import friendly_error


def test_disk_full_says_what_to_do():
    msg = friendly_error(OSError(errno.ENOSPC, "No space left on device", "/ws/runs/3/checkpoints/checkpoint-50"))
    assert msg.startswith("disk full while writing run files") and "resume" in msg


def test_cuda_and_cpu_out_of_memory_are_recognised():
    cuda = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 16386304 bytes")
    for exc in (cuda, cpu, MemoryError()):
        msg = friendly_error(exc)
        assert msg.startswith("out of memory:") and "gradient_checkpointing" in msg and "QLoRA" in msg


def test_other_errors_keep_their_type_and_text():
    assert friendly_error(ValueError("row 17: 'output' is empty")) == "ValueError: row 17: 'output' is empty"
