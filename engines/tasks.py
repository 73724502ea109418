"""Tasks, and how KServe's huggingfaceserver infers them from a model's architecture."""

from __future__ import annotations

import enum
from typing import Any


class Task(str, enum.Enum):
    table_question_answering = "table_question_answering"
    question_answering = "question_answering"
    token_classification = "token_classification"
    sequence_classification = "sequence_classification"
    multiple_choice = "multiple_choice"
    fill_mask = "fill_mask"
    text_generation = "text_generation"
    text2text_generation = "text2text_generation"
    text_embedding = "text_embedding"
    time_series_forecast = "time_series_forecast"


# First suffix match wins, in this order (KServe's table).
ARCHITECTURE_SUFFIXES: tuple[tuple[str, Task], ...] = (
    ("TapasForQuestionAnswering", Task.table_question_answering),
    ("ForQuestionAnswering", Task.question_answering),
    ("ForTokenClassification", Task.token_classification),
    ("ForSequenceClassification", Task.sequence_classification),
    ("ForMultipleChoice", Task.multiple_choice),
    ("ForMaskedLM", Task.fill_mask),
    ("ForCausalLM", Task.text_generation),
    ("ForConditionalGeneration", Task.text2text_generation),
    ("MTModel", Task.text2text_generation),
    ("EncoderDecoderModel", Task.text2text_generation),
    ("ForPrediction", Task.time_series_forecast),
)

# Tasks this build serves.
SUPPORTED_TASKS: frozenset[Task] = frozenset(
    {
        Task.text_generation,
        Task.text2text_generation,
        Task.text_embedding,
        Task.fill_mask,
        Task.sequence_classification,
        Task.token_classification,
    }
)
GENERATIVE_TASKS: frozenset[Task] = frozenset({Task.text_generation, Task.text2text_generation})
ENCODER_TASKS: frozenset[Task] = frozenset(
    {Task.text_embedding, Task.fill_mask, Task.sequence_classification, Task.token_classification}
)


def parse_task(name: str) -> Task:
    """Accept KServe's underscore names, and hyphenated ones as a courtesy."""
    try:
        return Task(name.strip().replace("-", "_"))
    except ValueError:
        valid = ", ".join(t.value for t in Task)
        raise ValueError(f"Unsupported task: {name}. Known tasks are: {valid}") from None


def infer_task(config: Any) -> Task:
    """Infer the task from `config.architectures[0]` as KServe does."""
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        raise ValueError(
            "Task couldn't be inferred: the model config lists no architectures. "
            "Please manually set the `--task` option."
        )
    arch = architectures[0]
    for suffix, task in ARCHITECTURE_SUFFIXES:
        if arch.endswith(suffix):
            return task
    raise ValueError(f"Task couldn't be inferred from {arch}. Please manually set `--task` option.")
