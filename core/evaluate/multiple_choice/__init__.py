"""Multiple-choice benchmarks scored the way lm-evaluation-harness (0.4.x, ``output_type: multiple_choice``) scores
them, so an accuracy here is the accuracy the harness reports for the same rows, model and prompt formulation.

How the harness scores one question (read from lm-eval 0.4.13; our own code, same rules):

- **Prompt styles.** No chat template; the context is the task's ``doc_to_text`` (after an optional description and
  few-shot examples) and each continuation is the target delimiter ``" "`` followed by one choice.

  - ``arc`` (the harness's ``arc_easy`` / ``arc_challenge``): ``"Question: {question}\nAnswer:"``, choices = the
    option texts. A row's ``context`` (a passage) goes first, as the harness's SciQ task renders it:
    ``"{context.lstrip()}\nQuestion: {question}\nAnswer:"``.
  - ``mmlu`` (the harness's ``mmlu_*`` prompt): ``"{question.strip()}\nA. {choice 0}\nB. {choice 1}\n...\nAnswer:"``,
    choices = the letters (``" A"``, ``" B"``, ...; past Z: AA, AB, ...); a passage goes first as
    ``"{context.strip()}\n"``. No subject line (the harness's per-subject ``description``).
  - ``native``: the harness's own task for the rows' layout (``core.data.formats`` keeps it as ``layout``), or the
    task named: ``hellaswag`` — ``preprocess("{activity_label}: {ctx_a} {ctx_b.capitalize()}")``, choices =
    ``preprocess(ending)`` (strip, " [title]" → ". ", bracketed text removed, double spaces made single), gold =
    ``label``; ``truthfulqa`` — the fixed 6-shot Q/A primer + ``"\n\nQ: {question}\nA:"``, MC1 choices =
    ``mc1_targets`` (gold = its true one: the harness's task takes choice 0, which is the true one in TruthfulQA's
    own files) and MC2 = ``mc2_targets``; ``arc`` — as the arc style; ``openbookqa`` — ``question_stem`` alone,
    choices = the option texts; ``mmlu`` — the mmlu style plus the harness's description ``"The following are
    multiple choice questions (with answers) about {subject with _ as spaces}.\n\n"`` when the row has a
    ``subject``. The generic ``question / choices / answer`` layout (cais/mmlu's columns) and MMLU's lettered CSV
    columns are ``mmlu``. HellaSwag, TruthfulQA and OpenBookQA have no place for a passage: a row with one is refused.
- **Few-shot** (``num_fewshot``, default 0 as in the harness's tasks; TruthfulQA's primer is its few-shot and the
  harness ignores ``num_fewshot`` there, so it is refused): each example is ``doc_to_text + " " + its gold choice +
  "\n\n"``, after the description. Examples come from a pool (``fewshot_rows``; default the scored rows themselves):
  ``mmlu`` takes the first N of the pool (the harness's ``first_n`` sampler; in ``native`` only rows of the same
  subject, as the harness's per-subject tasks do), the others draw N at random with ``random.Random(1234)`` (the
  harness's default sampler and ``fewshot_random_seed``), one draw per scored row in order. When the pool holds
  the scored rows (``exclude_self``), the harness's rule for a few-shot split equal to the test split applies: draw
  N + 1 and drop the rows equal to the question.
- **Tokens** (``encode_pair``, a causal model): trailing whitespace of the context moves to the front of the
  continuation; context and context+continuation are each encoded with the tokenizer's own defaults
  (``tokenizer.encode(text)``: whatever special tokens it adds by itself, e.g. a BOS for Llama-2, nothing for
  SmolLM2 / GPT-2 style tokenizers — but none when the text already starts with the prefix token's text); the
  continuation's tokens are the tail of the whole after the context's tokens. An empty context becomes the prefix
  token (BOS, else EOS).
- **Log-likelihood.** The model reads ``(context + continuation)[:-1]`` (left-truncated to the model's max length,
  from its config ``n_positions`` / ``max_position_embeddings`` / ``n_ctx``, else the tokenizer's, else 2048) and the
  continuation's log-probabilities (log-softmax over the vocabulary) are summed. We upcast logits to float32 before
  the log-softmax; the harness does it in the model's dtype unless ``softmax_dtype`` is set (identical in float32).
- **acc / acc_norm.** ``pred = argmax(lls)``; ``pred_norm = argmax(lls / len(choice))`` with the length in
  **characters** of the choice text without the delimiter (the harness's ``acc_bytes`` uses UTF-8 bytes; not
  reported here); ties go to the first choice; ``acc`` is the mean of ``pred == gold``; stderr = sample standard
  deviation / sqrt(n).
- **mc2** (TruthfulQA's ``process_results_mc2``): the probability mass of the true MC2 choices, normalised over all
  MC2 choices, ``sum(exp(ll) for true) / sum(exp(ll))``, averaged over the questions (computed as a softmax, so no
  underflow to 0/0 where the harness's ``exp`` would give NaN). Scored with the text formulations; under the lettered
  ``mmlu`` prompt only when the MC2 choices are the listed options. A row with only MC2 targets has no MC1 gold:
  it counts for mc2, not for acc / acc_norm.

Rows may be in any layout the Data tab reads as ``multiple_choice`` (they are normalised with
``core.data.formats``); a stored dataset's rows are already ``{"question", "choices", "answer", ...}``.

The parts, each importing only the ones above it: ``prompts`` (styles, formulations, few-shot draws, one request per
row), ``tokens`` (encode_pair, the model's max length), ``scoring`` (log-likelihoods, acc / acc_norm / mc2, the
summary). Their public names are re-exported here.
"""
from __future__ import annotations

from core.evaluate.multiple_choice.prompts import (
    FEWSHOT_DELIMITER,
    FEWSHOT_SEED,
    MMLU_DESCRIPTION,
    NATIVE_TASKS,
    PROMPT_STYLES,
    TARGET_DELIMITER,
    TRUTHFULQA_PRIMER,
    Formulation,
    MultipleChoiceError,
    build_request,
    build_requests,
    choice_label,
    fewshot_draws,
    formulation,
    hellaswag_preprocess,
    native_task_of,
    normalise_row,
)
from core.evaluate.multiple_choice.scoring import BASE_ADAPTER, MODEL_KEY, mc2_score, score_rows, summarise
from core.evaluate.multiple_choice.tokens import DEFAULT_MAX_LENGTH, encode_pair, model_max_length

__all__ = [
    "BASE_ADAPTER", "DEFAULT_MAX_LENGTH", "FEWSHOT_DELIMITER", "FEWSHOT_SEED", "MMLU_DESCRIPTION", "MODEL_KEY",
    "NATIVE_TASKS", "PROMPT_STYLES", "TARGET_DELIMITER", "TRUTHFULQA_PRIMER", "Formulation", "MultipleChoiceError",
    "build_request", "build_requests", "choice_label", "encode_pair", "fewshot_draws", "formulation",
    "hellaswag_preprocess", "mc2_score", "model_max_length", "native_task_of", "normalise_row", "score_rows",
    "summarise",
]
