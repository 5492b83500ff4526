"""Data: built-in digits and text corpora, ``.pt``/``.npz`` files, import paths; validation and batching."""

from landscape.data.builtin import (
    DIGITS_NUM_CLASSES,
    TEXT_VOCAB_SIZE,
    digits_tensors,
    split_text_corpus,
    text_corpus_bytes,
    text_sequences,
)
from landscape.data.loaders import (
    IGNORE_INDEX,
    TASKS,
    Dataset,
    Inputs,
    data_spec_kind,
    iterate_batches,
    list_data,
    load_data,
    primary_inputs,
    take_inputs,
    train_eval_split,
    validate_labels,
)

__all__ = [
    "DIGITS_NUM_CLASSES",
    "IGNORE_INDEX",
    "TASKS",
    "TEXT_VOCAB_SIZE",
    "Dataset",
    "Inputs",
    "data_spec_kind",
    "digits_tensors",
    "iterate_batches",
    "list_data",
    "load_data",
    "primary_inputs",
    "take_inputs",
    "split_text_corpus",
    "text_corpus_bytes",
    "text_sequences",
    "train_eval_split",
    "validate_labels",
]
