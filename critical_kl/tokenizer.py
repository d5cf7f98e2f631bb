"""Character-level tokenizer: one token per character (SPEC §2), over a vocabulary that is data.

A `Vocabulary` lists the text of every token in id order and names the padding token. A token whose
text is one character is that character; any other token (`<pad>`, `<|endoftext|>`) is special:
encoding never produces it, decoding drops it, and emitting it ends an episode (SPEC §4, rule 2).
A model directory carries its vocabulary (`checkpoints.load_model`); an imported model keeps its
authors' ids.

`DEFAULT` is the vocabulary of the models trained here: token 0 is padding and tokens 1..40 are the
40 characters of the task, in the order of `CHARS`: punctuation in ASCII order, the digits, the
upper-case letters, then the lower-case letters. There is no end token: an episode ends on the
"\\n" after the result line, or when PAD is emitted. The module-level names (`encode`, `PAD_ID`,
...) are those of `DEFAULT`.

Encoding goes through a table indexed by code point, so that a batch of thousands of texts is
encoded with a few numpy operations rather than a dictionary lookup per character.
"""
import dataclasses
from collections.abc import Sequence

import numpy as np

CHARS = ("\n +,-/:<=>[]"  # punctuation, in ASCII order
         "0123456789"
         "ACDEINT"
         "aceghnprstu")


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Token texts in id order and the id of the padding token; hashable (a static jit argument).

  Attributes:
    tokens: the text of each token id; one character, or a special token's name.
    pad_id: the token written after the end of a text; it may be a character (the authors' models
      pad with "%"), which then decodes to nothing.
  """
  tokens: tuple[str, ...]
  pad_id: int

  def __post_init__(self):
    object.__setattr__(self, "tokens", tuple(self.tokens))
    if not 0 <= self.pad_id < len(self.tokens):
      raise ValueError(f"pad_id {self.pad_id} is not a token id of a vocabulary of "
                       f"{len(self.tokens)}")
    chars = [t for t in self.tokens if len(t) == 1]
    repeated = sorted({c for c in chars if chars.count(c) > 1})
    if repeated:
      raise ValueError(f"characters with several token ids: {repeated!r}")
    # Derived lookup tables, outside the dataclass fields (equality and hash use the fields only).
    # _table[code point] is the token id of that character, or -1 if it is not in the vocabulary.
    ids = [i for i, t in enumerate(self.tokens) if len(t) == 1]
    table = np.full(max([ord(self.tokens[i]) for i in ids], default=0) + 1, -1, np.int32)
    table[[ord(self.tokens[i]) for i in ids]] = ids
    # _text[id] is what a token id decodes to: its character, or nothing for padding and specials.
    text = np.array([t if len(t) == 1 and i != self.pad_id else "" for i, t in
                     enumerate(self.tokens)])
    object.__setattr__(self, "_table", table)
    object.__setattr__(self, "_text", text)

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def chars(self) -> str:
    """The characters of the vocabulary (tokens of one character), in id order."""
    return "".join(t for t in self.tokens if len(t) == 1)

  @property
  def end_ids(self) -> tuple[int, ...]:
    """Tokens that end an episode when emitted: the padding token and every special token."""
    return tuple(i for i, t in enumerate(self.tokens) if len(t) != 1 or i == self.pad_id)

  def token_id(self, char: str) -> int:
    """The token id of one vocabulary character."""
    ids = self._lookup(char) if len(char) == 1 else [-1]
    if ids[0] < 0:
      raise ValueError(f"{char!r} is not a character of the vocabulary")
    return int(ids[0])

  def _lookup(self, text: str) -> np.ndarray:
    """int32 [len(text)], token ids, -1 where a character is not in the vocabulary."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    known = codes < len(self._table)
    return np.where(known, self._table[np.where(known, codes, 0)], -1).astype(np.int32)

  def _unknown_char(self, text: str, position: int, where: str = "") -> ValueError:
    return ValueError(f"unknown character {text[position]!r} at position {position}{where}; "
                      f"the vocabulary is {self.chars!r}")

  def encode(self, text: str) -> np.ndarray:
    """Encodes a text, one token per character.

    Returns:
      int32 [len(text)].

    Raises:
      ValueError: naming the first character outside the vocabulary and its position.
    """
    ids = self._lookup(text)
    unknown = np.flatnonzero(ids < 0)
    if unknown.size:
      raise self._unknown_char(text, int(unknown[0]))
    return ids

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Decodes token ids (list, numpy or jax array, 1-D) to text; padding and special tokens are
    skipped.

    Nothing stops the decoding early: a generated row decodes to its whole text, its padding
    dropped.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
      raise ValueError(f"decode takes a 1-D sequence of ids, got shape {ids.shape}")
    if not ids.size:
      return ""  # An empty list comes in as float64, which cannot index.
    if ids.min() < 0 or ids.max() >= len(self):
      raise ValueError(f"token ids must lie in 0..{len(self) - 1}, got {ids.min()}..{ids.max()}")
    return "".join(self._text[ids])

  def encode_batch(self, texts: Sequence[str], length: int | None = None,
                   pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encodes texts into a right-padded batch.

    Args:
      texts: B texts.
      length: L, the width of the batch; the longest text's length if None.
      pad_id: token written after the end of each text; the vocabulary's padding if None.

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
    flat = self._lookup(joined)
    unknown = np.flatnonzero(flat < 0)
    if unknown.size:
      position = int(unknown[0])
      row = int(np.searchsorted(np.cumsum(lengths), position, side="right"))
      start = position - int(lengths[:row].sum())
      raise self._unknown_char(texts[row], start, where=f" of text {row}")
    ids = np.full((len(texts), length), self.pad_id if pad_id is None else pad_id, dtype=np.int32)
    ids[np.arange(length) < lengths[:, None]] = flat
    return ids, lengths

  def to_dict(self) -> dict:
    """JSON data, as stored in a model's config."""
    return dict(tokens=list(self.tokens), pad_id=self.pad_id)

  @classmethod
  def from_dict(cls, data: dict) -> "Vocabulary":
    return cls(tuple(data["tokens"]), int(data["pad_id"]))


DEFAULT = Vocabulary(("<pad>",) + tuple(CHARS), pad_id=0)

PAD_ID = DEFAULT.pad_id
VOCAB_SIZE = len(DEFAULT)
NEWLINE_ID = DEFAULT.token_id("\n")
token_id = DEFAULT.token_id
encode = DEFAULT.encode
decode = DEFAULT.decode
encode_batch = DEFAULT.encode_batch
