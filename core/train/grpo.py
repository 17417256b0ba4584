"""GRPO runs: TRL's GRPOTrainer on the studio's spine (worker, complete checkpoints, stop/resume, live metrics).

The model answers each prompt ``num_generations`` times; the run's rewards (``core.train.rewards``) score every
answer; an answer's advantage is its reward against its group's mean; the policy moves toward the answers above it.
``batch_size`` counts prompts per device step (TRL's per-device batch counts answers: ``batch_size × num_generations``).

What is shown live, per logged step (``RunMetric.extra``): mean reward and its spread, each reward's mean, the mean
completion length, the KL to the reference when beta > 0, reward errors, the split of the step's time between
generation (sampling + scoring) and training, and a few sample answers with their rewards.
"""
from __future__ import annotations

import time

# what the metrics callback copies from a GRPO step's logs into RunMetric.extra (besides rewards/<name>/mean)
GRPO_KEYS = ("reward", "reward_std", "completions/mean_length", "completions/clipped_ratio", "kl", "entropy",
             "frac_reward_zero_std", "reward_errors", "time/generate_s", "time/step_s")
SAMPLES_PER_STEP = 2
SAMPLE_CHARS = 400


def grpo_arguments(base: dict, config) -> dict:
    """GRPOConfig keyword arguments from the studio's SFT arguments (``core.train.setup.trainer_arguments``)."""
    args = {k: v for k, v in base.items() if k not in (
        "dataset_kwargs", "max_length", "padding_free", "per_device_eval_batch_size", "eval_strategy", "eval_steps")}
    args.update(
        per_device_train_batch_size=config.batch_size * config.num_generations,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        train_sampling_strategy="random",
        eval_strategy="no",
        shuffle_dataset=True,
        log_completions=False,
    )
    return args


def prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        users = [m.get("content") or "" for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1] if users else (prompt[-1].get("content") if prompt else ""))
    return str(prompt or "")


def make_grpo_trainer_class(base_cls, reward_set, weights: list[float] | None = None):
    """A subclass of ``base_cls`` (GRPOTrainer plus the studio's checkpoint mixin) that counts tokens, times
    generation against training, keeps sample answers and adds the per-step reward errors to the logs."""
    from core.train.rewards import completion_text

    class StudioGRPOTrainer(base_cls):
        tokens_seen = 0
        samples: list[dict] = []
        _gen_s = 0.0

        def _generate_single_turn(self, *args, **kwargs):
            # sample in eval mode: in train mode the same generate() is several times slower on a CPU (measured 8x
            # for 8 answers of 64 tokens with the embedded model), and dropout has no place in sampling. Only
            # around the sampling itself: TRL files the step's metrics under the mode it sees outside it
            was_training = self.model.training
            self.model.eval()
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                self.model.train(was_training)

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                StudioGRPOTrainer._gen_s += time.perf_counter() - t0

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            if self.model.training:
                w = weights or [1.0] * rewards.shape[1]
                total = (rewards.nan_to_num(0.0) * rewards.new_tensor(w)).sum(dim=1)
                picks = sorted(range(len(completions)), key=lambda i: float(total[i]))  # the worst and the best
                idx = [picks[-1], picks[0]][:SAMPLES_PER_STEP] if len(picks) > 1 else picks
                StudioGRPOTrainer.samples = [
                    {"prompt": prompt_text(prompts[i])[-SAMPLE_CHARS:], "answer": completion_text(completions[i])
                     [:SAMPLE_CHARS], "reward": round(float(total[i]), 4),
                     "rewards": {n: round(float(rewards[i, j]), 4) for j, n in enumerate(reward_set.names)}}
                    for i in idx]
            return rewards

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                n = inputs["completion_mask"].sum() + inputs["prompt_mask"].sum()
                StudioGRPOTrainer.tokens_seen += int(n)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        def training_step(self, model, inputs, num_items_in_batch=None):
            t0 = time.perf_counter()
            gen0 = StudioGRPOTrainer._gen_s
            out = super().training_step(model, inputs, num_items_in_batch)
            self._step_times = getattr(self, "_step_times", [])
            self._step_times.append((time.perf_counter() - t0, StudioGRPOTrainer._gen_s - gen0))
            return out

        def log(self, logs, *args, **kwargs):
            if "loss" in logs:
                times = getattr(self, "_step_times", [])
                steps = max(1, self.state.global_step - getattr(self, "_logged_step", 0))
                if times:  # per optimizer step: a step is grad_accum training_step calls, one generation per batch
                    logs["time/step_s"] = sum(t for t, _ in times) / steps
                    logs["time/generate_s"] = sum(g for _, g in times) / steps
                    self._step_times = []
                self._logged_step = self.state.global_step
                logs["reward_errors"] = float(reward_set.take_errors())
            return super().log(logs, *args, **kwargs)

    return StudioGRPOTrainer
