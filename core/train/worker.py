"""The training kind's entry point: one run, in its own worker process (``core.runs.worker``).

``run_job(ctx)`` reads the run's TrainConfig, trains with TRL's SFTTrainer + PEFT (core.train.build), reports
progress and metrics through the runs store as it goes (core.train.callbacks), saves checkpoints with optimizer state
(core.train.checkpoints) and the final adapter under ``workspace/runs/<id>/``, and returns how it ended; recording the
ending is the runs core's job. SIGTERM (via ``ctx.should_stop()``) means: checkpoint after the current step, then
stop.

Checkpoints are complete or absent: each is written under ``checkpoints/.staging/``, marked complete, and renamed
into place; a save that fails (a full disk) leaves nothing half-written, and the previous checkpoint stays usable.
With several processes (DDP / FSDP, core.train.distributed) the same worker runs as each rank (core.runs.ranks);
rank 0 writes the run's records and files, every rank its part of a checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from core.runs import paths
from core.runs.errors import DiskFullError, disk_full_message, is_disk_full
from core.runs.paths import save_atomically
from core.runs.worker import JobContext, JobResult, StopRequested, log
from core.train.build import build_trainer
from core.train.callbacks import _num
from core.train.config import TrainConfig
from core.train.distributed import full_state_dict, save_final
from core.train.limits import apply_process_limits
from core.train.trackers import open_for_run
from storage import RunStatus


def run_job(ctx: JobContext) -> JobResult:
    """The ``train`` kind: train, save the adapter (or full model), return how it ended."""
    apply_process_limits()
    config = TrainConfig.model_validate(ctx.config)
    removed = paths.remove_partial_checkpoints(ctx.dir) if ctx.is_main else []
    if removed:
        log("removed unfinished checkpoint folder(s): " + ", ".join(p.name for p in removed))
    resume_from = ctx.job.resume_from_checkpoint
    if resume_from and not paths.is_complete_checkpoint(Path(resume_from)):
        newest = paths.latest_checkpoint(ctx.dir)
        log(f"checkpoint {Path(resume_from).name} is incomplete; "
            + (f"using {newest.name} instead" if newest else "starting from the beginning"))
        resume_from = str(newest) if newest else None
    trainer = None
    report = open_for_run(ctx, config, log=log)  # rank 0's trackers (report_to); none that fails stops the run
    ending, adapter = "failed", None
    try:
        trainer, tokenizer, counts = build_trainer(ctx, config, report=report)
        if resume_from:
            if ctx.is_main:
                from core.runs import store

                store.drop_metrics_after(ctx.job_id, paths.checkpoint_step(resume_from))
                seen = [m.extra["tokens_seen"] for m in store.metrics(ctx.job_id)
                        if (m.extra or {}).get("tokens_seen") is not None]
                if seen:  # the tokens-seen axis goes on from where the checkpoint left it
                    type(trainer).tokens_seen = int(seen[-1])
            log(f"resuming from {resume_from}")
        if ctx.should_stop():
            raise StopRequested()
        result = trainer.train(resume_from_checkpoint=resume_from or None)
        final = {k: _num(v) for k, v in result.metrics.items() if _num(v) is not None}
        final.update({"dataset_" + k: v for k, v in counts.items()})
        final["global_step"] = trainer.state.global_step
        out_dir = ctx.dir / ("model" if config.method == "full" else "adapter")
        # FSDP: the shards gathered (every rank takes part; LoRA: the adapter's only); else None
        gathered = full_state_dict(trainer, trainable_only=config.method != "full")
        if ctx.is_main:
            def write(tmp: Path) -> None:
                save_final(trainer, str(tmp), gathered)
                tokenizer.save_pretrained(str(tmp))
                applied, trained_ids, vocab_size = trainer.studio_template
                if applied is not None:
                    from core.data.templates import write_meta

                    write_meta(tmp, applied, trained_token_ids=trained_ids, vocab_size=vocab_size, tokenizer=tokenizer)
                (tmp / "train_config.yaml").write_text(config.to_yaml(), encoding="utf-8")

            save_atomically(out_dir, write, needed_bytes=trainer.checkpoint_bytes_needed(), what="the adapter")
        status = RunStatus.stopped if ctx.should_stop() else RunStatus.succeeded
        ending, adapter = status.value, (out_dir if config.method != "full" else None)
        return JobResult(status=status, final_metrics=final, fields={"adapter_path": str(out_dir)},
                         summary=str(final))
    except BaseException as exc:
        if isinstance(exc, StopRequested):
            ending = "stopped"
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            needed = trainer.checkpoint_bytes_needed() if trainer is not None else None
            raise DiskFullError(disk_full_message(paths.free_bytes(ctx.dir), needed)) from exc
        raise
    finally:
        report.finish(ending, adapter)
