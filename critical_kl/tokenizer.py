"""Character-level tokenizer: one token per character (SPEC §2).

Token 0 is padding; tokens 1..40 are the 40 characters of the task, in the order of `CHARS`:
punctuation in ASCII order, the digits, the upper-case letters, then the lower-case letters. There
is no end token: an episode ends on the "\\n" after the result line, or when PAD is emitted.

Encoding goes through a 256-entry table indexed by byte, so that a batch of thousands of texts is
encoded with a few numpy operations rather than a dictionary lookup per character.
"""
from collections.abc import Sequence

import numpy as np

PAD_ID = 0
CHARS = ("\n +,-/:<=>[]"  # punctuation, in ASCII order
         "0123456789"
         "ACDEINT"
         "aceghnprstu")
VOCAB_SIZE = len(CHARS) + 1

# _TABLE[byte] is the token id of that ASCII character, or -1 if it is not in the vocabulary.
_TABLE = np.full(256, -1, dtype=np.int32)
_TABLE[[ord(c) for c in CHARS]] = np.arange(1, len(CHARS) + 1, dtype=np.int32)

# _CHAR_OF[id] is the text of a token id; PAD decodes to nothing.
_CHAR_OF = np.array([""] + list(CHARS))


def token_id(char: str) -> int:
  """The token id of one vocabulary character."""
  if len(char) != 1 or char not in CHARS:
    raise ValueError(f"{char!r} is not a character of the vocabulary")
  return CHARS.index(char) + 1


NEWLINE_ID = token_id("\n")


def _lookup(text: str) -> np.ndarray:
  """int32 [len(text)], token ids, -1 where a character is not in the vocabulary."""
  # errors="replace" writes one "?" (not in the vocabulary) per non-ASCII character, so positions
  # still match the text's characters.
  raw = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
  return _TABLE[raw]


def _unknown_char(text: str, position: int, where: str = "") -> ValueError:
  return ValueError(f"unknown character {text[position]!r} at position {position}{where}; "
                    f"the vocabulary is {CHARS!r}")


def encode(text: str) -> np.ndarray:
  """Encodes a text, one token per character.

  Returns:
    int32 [len(text)].

  Raises:
    ValueError: naming the first character outside the vocabulary and its position.
  """
  ids = _lookup(text)
  unknown = np.flatnonzero(ids < 0)
  if unknown.size:
    raise _unknown_char(text, int(unknown[0]))
  return ids


def decode(ids: Sequence[int] | np.ndarray) -> str:
  """Decodes token ids (list, numpy or jax array, 1-D) to text; PAD tokens are skipped.

  Nothing stops the decoding early: a generated row decodes to its whole text, its padding dropped.
  """
  ids = np.asarray(ids)
  if ids.ndim != 1:
    raise ValueError(f"decode takes a 1-D sequence of ids, got shape {ids.shape}")
  if not ids.size:
    return ""  # An empty list comes in as float64, which cannot index.
  if ids.min() < 0 or ids.max() >= VOCAB_SIZE:
    raise ValueError(f"token ids must lie in 0..{VOCAB_SIZE - 1}, got {ids.min()}..{ids.max()}")
  return "".join(_CHAR_OF[ids])


def encode_batch(texts: Sequence[str], length: int | None = None,
                 pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
  """Encodes texts into a right-padded batch.

  Args:
    texts: B texts.
    length: L, the width of the batch; the longest text's length if None.
    pad_id: token written after the end of each text.

  Returns:
    ids: int32 [B, L], each text followed by `pad_id`.
    lengths: int32 [B], the length of each text.

  Raises:
    ValueError: if a character is outside the vocabulary, or a text is longer than `length`.
  """
  lengths = np.array([len(text) for text in texts], dtype=np.int32)
  longest = int(lengths.max()) if lengths.size else 0
  if length is None:
    length = longest
  elif longest > length:
    raise ValueError(f"text {int(lengths.argmax())} has {longest} characters, more than "
                     f"length={length}")
  # One lookup over the concatenated texts, scattered into the rows.
  joined = "".join(texts)
  flat = _lookup(joined)
  unknown = np.flatnonzero(flat < 0)
  if unknown.size:
    position = int(unknown[0])
    row = int(np.searchsorted(np.cumsum(lengths), position, side="right"))
    start = position - int(lengths[:row].sum())
    raise _unknown_char(texts[row], start, where=f" of text {row}")
  ids = np.full((len(texts), length), pad_id, dtype=np.int32)
  ids[np.arange(length) < lengths[:, None]] = flat
  return ids, lengths
