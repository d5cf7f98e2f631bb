"""Tests of the task text, the checker, critical tokens and problem sampling."""
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from critical_kl import arithmetic

GOLDEN = Path(__file__).resolve().parent / "data" / "scratchpad.jsonl"
ROWS = [json.loads(line) for line in GOLDEN.read_text().splitlines()]

EXAMPLE_COMPLETION = """
<scratch>
[5,8,7,6] + [3,9,3] , A=[] , C=0 , 6+3+0=9 , A->9 , C->0
[5,8,7] + [3,9] , A=[9] , C=0 , 7+9+0=16 , A->6 , C->1
[5,8] + [3] , A=[6,9] , C=1 , 8+3+1=12 , A->2 , C->1
[5] + [] , A=[2,6,9] , C=1 , 5+0+1=6 , A->6 , C->0
[] + [] , A=[6,2,6,9] C=0 , END
</scratch>
6 2 6 9
"""


def _lengths(problems: np.ndarray) -> np.ndarray:
  """int [num, 2], the number of digits of each operand."""
  return np.char.str_len(problems.astype(str))


def test_golden_file_is_complete():
  assert len(ROWS) == 105


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['a']}+{r['b']}" for r in ROWS])
def test_golden_row(row):
  a, b = row["a"], row["b"]
  assert arithmetic.prompt(a, b) == row["prompt"]
  assert arithmetic.scratchpad(a, b) == row["completion"]
  assert arithmetic.result(a, b) == row["result"]
  assert arithmetic.critical_tokens(a, b, row["pretrain_max_digits"]) == row["critical_tokens"]


def test_spec_example():
  assert arithmetic.prompt(5876, 393) == "Input:\n5876+393\nTarget:"
  assert arithmetic.scratchpad(5876, 393) == EXAMPLE_COMPLETION
  assert arithmetic.result(5876, 393) == "6 2 6 9"


def test_spec_example_critical_tokens():
  completion = arithmetic.scratchpad(5876, 393)
  tokens = arithmetic.critical_tokens(5876, 393, n_max=3)
  chars = ["".join(completion[t["offset"]] for t in tokens if t["line"] == line)
           for line in (1, 2, 3)]
  assert chars == ["6,", "7,", "8,"]  # SPEC §6: the ",6", ",7" and ",8" of operand 1.
  mask = arithmetic.critical_mask(5876, 393, n_max=3)
  assert mask.shape == (len(completion),)
  assert sorted(np.flatnonzero(mask)) == sorted(t["offset"] for t in tokens)


def test_no_critical_tokens_in_distribution():
  assert arithmetic.critical_tokens(5876, 393, n_max=4) == []
  assert not arithmetic.critical_mask(5876, 393, n_max=4).any()


def test_critical_tokens_short_lists_drop_missing_characters():
  # With n_max = 1, line 2 of 12+345 lists [1] and [3,4]: no comma before their first digits.
  names = [(t["line"], t["operand"], t["name"], t["char"])
           for t in arithmetic.critical_tokens(12, 345, n_max=1)]
  assert (2, "operand_1", "n+1_digit", "1") in names
  assert (2, "operand_1", "n+1_comma", ",") not in names
  assert [n for n in names if n[0] == 3] == [(3, "operand_2", "n+2_digit", "3")]


def test_critical_tokens_reject_bad_n_max():
  with pytest.raises(ValueError, match="n_max"):
    arithmetic.critical_tokens(12, 34, n_max=0)


def test_carry_into_new_digit():
  assert arithmetic.result(999, 1) == "1 0 0 0"
  assert arithmetic.scratchpad(999, 1).endswith("A=[0,0,0] C=1 , END\n</scratch>\n1 0 0 0\n")


def test_zero_plus_zero():
  assert arithmetic.scratchpad(0, 0) == ("\n<scratch>\n"
                                         "[0] + [0] , A=[] , C=0 , 0+0+0=0 , A->0 , C->0\n"
                                         "[] + [] , A=[0] C=0 , END\n"
                                         "</scratch>\n0\n")


def test_negative_operand_raises():
  with pytest.raises(ValueError, match="non-negative"):
    arithmetic.scratchpad(-1, 2)


def test_checker():
  completion = arithmetic.scratchpad(5876, 393)
  assert arithmetic.extract_result(completion) == "6 2 6 9"
  assert arithmetic.is_correct(completion, 5876, 393)
  assert not arithmetic.is_correct(completion, 5876, 394)
  wrong = completion.replace("</scratch>\n6 2 6 9", "</scratch>\n6 2 6 8")
  assert not arithmetic.is_correct(wrong, 5876, 393)
  # The result line must be complete: cut before its "\n", it does not count.
  assert arithmetic.extract_result(completion[:-1]) is None
  assert not arithmetic.is_correct(completion[:-1], 5876, 393)
  assert arithmetic.extract_result(completion[:50]) is None
  assert arithmetic.extract_result("</scratch>\n\n") == ""


@pytest.mark.parametrize("num_digits", [1, 2])
def test_max_completion_length_is_the_maximum(num_digits):
  operands = range(10**num_digits)
  longest = max(len(arithmetic.scratchpad(a, b)) for a, b in itertools.product(operands, repeat=2))
  assert arithmetic.max_completion_length(num_digits) == longest


def test_max_lengths_of_all_nines():
  nines = 10**5 - 1
  completion = arithmetic.scratchpad(nines, nines)
  assert arithmetic.max_completion_length(5) == len(completion)
  assert arithmetic.max_sequence_length(5) == len(arithmetic.prompt(nines, nines) + completion)


def test_sample_operand_ranges():
  rng = np.random.default_rng(0)
  one = arithmetic.sample_operand(rng, np.ones(2000, dtype=int))
  assert one.dtype == np.int64
  assert set(one.tolist()) == set(range(10))
  lengths = rng.integers(1, arithmetic.MAX_DIGITS + 1, size=(50, 3))
  operands = arithmetic.sample_operand(rng, lengths)
  assert operands.shape == (50, 3)
  np.testing.assert_array_equal(_lengths(operands), lengths)


@pytest.mark.parametrize("bad", [0, -1, arithmetic.MAX_DIGITS + 1])
def test_sample_operand_rejects_bad_lengths(bad):
  with pytest.raises(ValueError, match="operand lengths"):
    arithmetic.sample_operand(np.random.default_rng(0), np.array([3, bad]))


def test_sample_balanced():
  problems = arithmetic.sample_balanced(np.random.default_rng(0), 4000, n_max=5)
  assert problems.shape == (4000, 2) and problems.dtype == np.int64
  lengths = _lengths(problems)
  for column in lengths.T:
    np.testing.assert_array_equal(np.unique(column), np.arange(1, 6))
  # Independent lengths: every pair occurs.
  assert len({tuple(pair) for pair in lengths}) == 25


def test_sample_in_distribution():
  lengths = _lengths(arithmetic.sample_in_distribution(np.random.default_rng(1), 2000, n_max=3))
  np.testing.assert_array_equal(np.unique(lengths), [1, 2, 3])


def test_sample_identical():
  lengths = _lengths(arithmetic.sample_identical(np.random.default_rng(0), 500, digits=7))
  assert (lengths == 7).all()


def test_sample_varying():
  lengths = _lengths(arithmetic.sample_varying(np.random.default_rng(0), 2000, digits=6))
  assert (lengths.max(axis=1) == 6).all()
  np.testing.assert_array_equal(np.unique(lengths.min(axis=1)), np.arange(1, 7))
  # The long operand is chosen at random: either side is sometimes the shorter one.
  assert (lengths[:, 0] < 6).any() and (lengths[:, 1] < 6).any()


def test_sample_rl():
  n_max, k = 5, 2
  lengths = _lengths(arithmetic.sample_rl(np.random.default_rng(0), 4000, n_max, k))
  assert (lengths.max(axis=1) == n_max + k).all()
  other = lengths.min(axis=1)
  np.testing.assert_array_equal(np.unique(other), np.arange(1, n_max + k + 1))
  assert 0.45 < (other <= n_max).mean() < 0.55
  assert (lengths[:, 0] < n_max + k).any() and (lengths[:, 1] < n_max + k).any()


@pytest.mark.parametrize("sample", [
    lambda rng: arithmetic.sample_balanced(rng, 100, 4),
    lambda rng: arithmetic.sample_identical(rng, 100, 4),
    lambda rng: arithmetic.sample_varying(rng, 100, 4),
    lambda rng: arithmetic.sample_rl(rng, 100, 4, 2),
])
def test_sampling_is_deterministic(sample):
  first = sample(np.random.default_rng(42))
  np.testing.assert_array_equal(first, sample(np.random.default_rng(42)))
  assert not np.array_equal(first, sample(np.random.default_rng(43)))


@pytest.mark.parametrize("call, name", [
    (lambda rng: arithmetic.sample_balanced(rng, 10, 0), "n_max"),
    (lambda rng: arithmetic.sample_identical(rng, 10, 0), "digits"),
    (lambda rng: arithmetic.sample_varying(rng, 10, -2), "digits"),
    (lambda rng: arithmetic.sample_rl(rng, 10, 0, 1), "n_max"),
    (lambda rng: arithmetic.sample_rl(rng, 10, 3, 0), "k"),
])
def test_sampling_rejects_bad_lengths(call, name):
  with pytest.raises(ValueError, match=name):
    call(np.random.default_rng(0))


def test_sample_suite():
  rng = np.random.default_rng(0)
  assert (_lengths(arithmetic.sample_suite(rng, "identical", 50, 4)) == 4).all()
  assert (_lengths(arithmetic.sample_suite(rng, "varying", 50, 4)).max(axis=1) == 4).all()
  with pytest.raises(ValueError, match="unknown suite 'mixed'"):
    arithmetic.sample_suite(rng, "mixed", 50, 4)
