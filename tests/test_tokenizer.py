"""Tests of the character tokenizer."""
import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from critical_kl import tokenizer

GOLDEN = Path(__file__).resolve().parent / "data" / "scratchpad.jsonl"
TEXTS = [row["prompt"] + row["completion"]
         for row in map(json.loads, GOLDEN.read_text().splitlines())]


def test_vocabulary():
  assert tokenizer.VOCAB_SIZE == 41
  assert len(tokenizer.CHARS) == 40 == len(set(tokenizer.CHARS))
  assert tokenizer.PAD_ID == 0
  assert tokenizer.token_id("\n") == tokenizer.NEWLINE_ID == 1
  assert [tokenizer.token_id(c) for c in tokenizer.CHARS] == list(range(1, 41))


def test_golden_characters_are_in_vocabulary():
  assert set("".join(TEXTS)) <= set(tokenizer.CHARS)


def test_round_trip_golden_texts():
  for text in TEXTS:
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert (ids > tokenizer.PAD_ID).all()
    assert tokenizer.decode(ids) == text


def test_encode_matches_token_id():
  text = TEXTS[0]
  assert tokenizer.encode(text).tolist() == [tokenizer.token_id(c) for c in text]


@pytest.mark.parametrize("text, char, position", [("12+x4", "'x'", 3), ("é", "'é'", 0),
                                                  ("Input:\t", "'\\t'", 6)])
def test_unknown_character_raises(text, char, position):
  with pytest.raises(ValueError, match=re.escape(f"{char} at position {position}")):
    tokenizer.encode(text)


def test_token_id_rejects_unknown():
  with pytest.raises(ValueError, match="'x'"):
    tokenizer.token_id("x")


def test_decode_skips_pad_and_accepts_jax_and_lists():
  ids = tokenizer.encode("1+2")
  padded = np.concatenate([ids, [tokenizer.PAD_ID] * 3])
  assert tokenizer.decode(padded) == "1+2"
  assert tokenizer.decode(jnp.asarray(padded)) == "1+2"
  assert tokenizer.decode(padded.tolist()) == "1+2"
  assert tokenizer.decode([]) == ""


def test_decode_rejects_out_of_range():
  with pytest.raises(ValueError, match="token ids"):
    tokenizer.decode([1, tokenizer.VOCAB_SIZE])
  with pytest.raises(ValueError, match="token ids"):
    tokenizer.decode([-1])


def test_encode_batch_pads_right():
  texts = ["1+2", "", "A->9"]
  ids, lengths = tokenizer.encode_batch(texts)
  assert ids.dtype == np.int32 and lengths.dtype == np.int32
  assert ids.shape == (3, 4)
  np.testing.assert_array_equal(lengths, [3, 0, 4])
  for row, text in zip(ids, texts):
    np.testing.assert_array_equal(row[:len(text)], tokenizer.encode(text))
    assert (row[len(text):] == tokenizer.PAD_ID).all()
    assert tokenizer.decode(row) == text


def test_encode_batch_golden_with_fixed_length():
  ids, lengths = tokenizer.encode_batch(TEXTS, length=1000, pad_id=7)
  assert ids.shape == (len(TEXTS), 1000)
  for row, length, text in zip(ids, lengths, TEXTS):
    assert length == len(text)
    np.testing.assert_array_equal(row[:length], tokenizer.encode(text))
    assert (row[length:] == 7).all()


def test_encode_batch_rejects_long_text():
  with pytest.raises(ValueError, match="length=2"):
    tokenizer.encode_batch(["1", "123"], length=2)


def test_encode_batch_names_text_and_position_of_unknown():
  with pytest.raises(ValueError, match="'x' at position 1 of text 2"):
    tokenizer.encode_batch(["12", "34", "5x"])


def test_encode_batch_empty():
  ids, lengths = tokenizer.encode_batch([], length=5)
  assert ids.shape == (0, 5) and lengths.shape == (0,)


def test_default_vocabulary_is_the_module_table():
  assert tokenizer.DEFAULT.tokens == ("<pad>",) + tuple(tokenizer.CHARS)
  assert tokenizer.DEFAULT.chars == tokenizer.CHARS and tokenizer.DEFAULT.end_ids == (0,)
  assert tokenizer.Vocabulary.from_dict(tokenizer.DEFAULT.to_dict()) == tokenizer.DEFAULT


def test_another_vocabulary_keeps_its_ids():
  # Characters in another order, padding by a character, a special token, a non-ASCII character.
  vocabulary = tokenizer.Vocabulary(("b", "<|endoftext|>", "\n", "%", "a", "é"), pad_id=3)
  assert len(vocabulary) == 6 and vocabulary.chars == "b\n%aé"
  assert vocabulary.end_ids == (1, 3)
  assert vocabulary.encode("ab\né").tolist() == [4, 0, 2, 5]
  assert vocabulary.token_id("\n") == 2
  assert vocabulary.decode([4, 1, 0, 3, 3]) == "ab"  # the special token and the padding drop out
  ids, lengths = vocabulary.encode_batch(["a", "bab"])
  np.testing.assert_array_equal(ids, [[4, 3, 3], [0, 4, 0]])
  np.testing.assert_array_equal(lengths, [1, 3])
  with pytest.raises(ValueError, match=re.escape("unknown character '+' at position 1")):
    vocabulary.encode("a+")
  with pytest.raises(ValueError, match="'<' is not a character"):
    vocabulary.token_id("<")
  with pytest.raises(ValueError, match="token ids must lie in 0..5"):
    vocabulary.decode([6])
  # A static jit argument: hashable, and equal by value.
  again = tokenizer.Vocabulary.from_dict(json.loads(json.dumps(vocabulary.to_dict())))
  assert again == vocabulary and hash(again) == hash(vocabulary)


def test_vocabulary_rejects_repeated_characters_and_bad_padding():
  with pytest.raises(ValueError, match=re.escape("several token ids: ['a']")):
    tokenizer.Vocabulary(("<pad>", "a", "b", "a"), pad_id=0)
  with pytest.raises(ValueError, match="pad_id 3"):
    tokenizer.Vocabulary(("<pad>", "a", "b"), pad_id=3)
