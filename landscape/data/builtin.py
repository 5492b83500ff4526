"""Built-in data: scikit-learn's 8x8 handwritten digits and a byte-level text corpus.

Both ship with the software that landscape already depends on, so they work offline:

* ``digits`` -- ``sklearn.datasets.load_digits``: 1,797 real 8x8 grey-scale digits (64 features,
  pixel values 0..16, scaled here to [0, 1]) with labels 0..9.
* ``text`` -- the prose of Python's own documentation topics (``pydoc_data.topics.topics``, the
  text behind ``help('if')``): the 79 topics concatenated in key order, separated by a blank line,
  UTF-8 encoded (~465k bytes, token ids 0..255).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from landscape.errors import UserError

__all__ = [
    "DIGITS_NUM_CLASSES",
    "TEXT_VOCAB_SIZE",
    "digits_tensors",
    "split_text_corpus",
    "text_corpus_bytes",
    "text_sequences",
]

DIGITS_NUM_CLASSES = 10
TEXT_VOCAB_SIZE = 256


@lru_cache(maxsize=1)
def _digits_cached() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float64) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return x, y


def digits_tensors(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """All 1,797 digits: ``x`` ``[1797, 64]`` in [0, 1] of ``dtype`` and labels ``y`` ``[1797]`` long."""
    x, y = _digits_cached()
    return x.to(dtype).clone(), y.clone()


@lru_cache(maxsize=1)
def text_corpus_bytes() -> bytes:
    """The text corpus as UTF-8 bytes: ``pydoc_data.topics.topics`` joined in key order by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


def split_text_corpus(fraction: float = 0.9) -> tuple[bytes, bytes]:
    """Two disjoint parts of the corpus: the first ``fraction`` of its bytes and the rest.

    The cut is a plain byte position, so the second part is the text of the last topics in key
    order (part of ``typesmapping`` through ``yield``): a natural pre-train / held-out
    (or fine-tuning) pair.
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"text split fraction must be strictly between 0 and 1, got {fraction}")
    data = text_corpus_bytes()
    cut = int(len(data) * fraction)
    return data[:cut], data[cut:]


def text_sequences(data: bytes, seq_len: int) -> tuple[Tensor, Tensor]:
    """Cut ``data`` into non-overlapping ``seq_len + 1``-byte chunks: ``x = chunk[:-1]``, ``y = chunk[1:]``.

    Returns long tensors of shape ``[N, seq_len]`` with ``N = len(data) // (seq_len + 1)``; a
    trailing partial chunk is dropped.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise UserError(f"seq_len must be a positive integer, got {seq_len!r}")
    n = len(data) // (seq_len + 1)
    if n == 0:
        raise UserError(f"text of {len(data)} bytes is too short for one sequence of seq_len={seq_len}")
    tokens = torch.frombuffer(bytearray(data[: n * (seq_len + 1)]), dtype=torch.uint8).long()
    chunks = tokens.view(n, seq_len + 1)
    return chunks[:, :-1].clone(), chunks[:, 1:].clone()
