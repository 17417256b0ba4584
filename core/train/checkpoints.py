"""A run's checkpoints as the trainers write them: complete or absent.

Each is written under ``checkpoints/.staging/``, marked complete, and renamed into place (the disk checked first); a
save that fails (a full disk) leaves nothing half-written, and the previous checkpoint stays usable. Only the newest
``save_total_limit`` stay. A mixin shared by the SFT / preference and the GRPO trainers.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from core.runs import paths
from core.runs.errors import DiskFullError, disk_full_message, is_disk_full
from core.runs.paths import publish, save_atomically
from core.runs.worker import JobContext
from core.train.distributed import barrier, world_size


def checkpoint_mixin(ctx: JobContext, resolved, keep: int):
    """A trainer mixin: checkpoints appear only when complete (written aside, then renamed into place, with the disk
    checked first), and only the newest ``keep`` stay. Shared by the SFT / preference and the GRPO trainers."""

    class StudioCheckpoints:
        last_checkpoint_bytes: int | None = None

        def checkpoint_bytes_needed(self) -> int:
            """Size of the last checkpoint, or the estimate: trainable weights + Adam's two fp32 states (+ the
            frozen weights for a full fine-tune) + the tokenizer files."""
            if self.last_checkpoint_bytes:
                return self.last_checkpoint_bytes
            params = [p for p in self.model.parameters() if p.requires_grad]
            weights = sum(p.numel() * p.element_size() for p in params)
            states = sum(p.numel() * 8 for p in params)
            tok = sum(f.stat().st_size for f in Path(resolved.path).glob("*token*") if f.is_file()) \
                if resolved.is_local else 5_000_000
            return int(weights + states + tok + 1_000_000)

        def _save_checkpoint(self, model, trial):
            root = Path(self.args.output_dir)
            name = f"{paths.CHECKPOINT_PREFIX}{self.state.global_step}"
            staging = paths.staging_dir(ctx.dir)
            parent = super()
            if world_size() > 1:
                return self._save_checkpoint_ranks(model, trial, root, name, staging)

            def write(tmp: Path) -> None:
                real_output_dir = self.args.output_dir
                self.args.output_dir = str(staging)  # HF writes <output_dir>/checkpoint-N = our temporary folder
                try:
                    parent._save_checkpoint(model, trial)
                finally:
                    self.args.output_dir = real_output_dir
                    (staging / "README.md").unlink(missing_ok=True)  # TRL's model card, written beside it

            save_atomically(root / name, write, needed_bytes=self.checkpoint_bytes_needed(),
                            what="a checkpoint of this run", tmp=staging / name)
            self._after_save(root / name)

        def _after_save(self, saved: Path) -> None:
            self.last_checkpoint_bytes = paths.dir_size_bytes(saved)
            if keep:
                for old in paths.complete_checkpoints(ctx.dir)[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)

        def _save_checkpoint_ranks(self, model, trial, root: Path, name: str, staging: Path) -> None:
            """Several ranks: each writes its part into the one staging folder (DDP: rank 0 the weights and the
            optimizer, every rank its RNG state; FSDP: every rank its shard of both), then rank 0 publishes it
            whole. A rank that fails raises; the others wait for it at the barrier until core.runs.ranks ends
            them all."""
            tmp = staging / name
            if ctx.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
                staging.mkdir(parents=True, exist_ok=True)
            barrier()
            real_output_dir = self.args.output_dir
            self.args.output_dir = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.output_dir = real_output_dir
            barrier()  # every rank's part is written
            if ctx.is_main:
                (tmp / "README.md").unlink(missing_ok=True)
                try:
                    publish(tmp, root / name)
                except BaseException as exc:
                    shutil.rmtree(tmp, ignore_errors=True)
                    if is_disk_full(exc) and not isinstance(exc, DiskFullError):
                        raise DiskFullError(disk_full_message(paths.free_bytes(root), self.checkpoint_bytes_needed(),
                                                              "a checkpoint of this run")) from exc
                    raise
                self._after_save(root / name)
            barrier()  # published (and the oldest rotated) before any rank trains on

    return StudioCheckpoints


def checkpoint_mixin_on(base_cls, ctx: JobContext, resolved, keep: int):
    return type(f"Studio{base_cls.__name__}", (checkpoint_mixin(ctx, resolved, keep), base_cls), {})
