"""The addition task: prompts, scratchpads, the result check, critical tokens and problem sampling.

The text format is that of SPEC §2, reproduced character for character (it is the format the
pre-trained model learns and the RL reward checks), e.g. for 5876+393:

  prompt:     "Input:\\n5876+393\\nTarget:"
  completion: "\\n<scratch>\\n"
              "[5,8,7,6] + [3,9,3] , A=[] , C=0 , 6+3+0=9 , A->9 , C->0\\n"
              ... one such line per digit position ...
              "[] + [] , A=[6,2,6,9] C=0 , END\\n"
              "</scratch>\\n"
              "6 2 6 9\\n"

Problems are pairs (a, b) of non-negative ints; the samplers return them as int64 arrays [num, 2]
and take an explicit `numpy.random.Generator`, so that a seed fixes the data.
"""
from collections.abc import Callable

import numpy as np

SCRATCH_OPEN = "\n<scratch>\n"
SCRATCH_CLOSE = "</scratch>\n"

# Critical tokens are looked for in the first three scratchpad lines (SPEC §6).
CRITICAL_LINES = 3

# The longest operand an int64 holds: 10**18 < 2**63 <= 10**19.
MAX_DIGITS = 18


def _check_operands(a: int, b: int) -> None:
  if a < 0 or b < 0:
    raise ValueError(f"operands must be non-negative, got {a} and {b}")


def _digits(n: int) -> list[int]:
  """Decimal digits of a non-negative int, most-significant first."""
  return [int(c) for c in str(n)]


def _digit_list(digits: list[int]) -> str:
  """Writes digits as the scratchpad writes a list: `[5,8,7,6]`, or `[]`."""
  return "[" + ",".join(map(str, digits)) + "]"


def _scratch_lines(a: int, b: int) -> list[str]:
  """The lines between `<scratch>` and `</scratch>`: one per step, then the closing line.

  Each line ends with "\\n".
  """
  _check_operands(a, b)
  xs, ys = _digits(a), _digits(b)
  answer: list[int] = []
  carry = 0
  lines = []
  while xs or ys:
    x = xs[-1] if xs else 0
    y = ys[-1] if ys else 0
    s = x + y + carry
    lines.append(f"{_digit_list(xs)} + {_digit_list(ys)} , A={_digit_list(answer)} , C={carry} , "
                 f"{x}+{y}+{carry}={s} , A->{s % 10} , C->{s // 10}\n")
    answer.insert(0, s % 10)
    carry = s // 10
    xs, ys = xs[:-1], ys[:-1]
  # No " ," before "C=" here: the format inherited from Lee et al. (SPEC §2).
  lines.append(f"[] + [] , A={_digit_list(answer)} C={carry} , END\n")
  return lines


def prompt(a: int, b: int) -> str:
  """The prompt (the RL state s0): "Input:\\n{a}+{b}\\nTarget:"."""
  _check_operands(a, b)
  return f"Input:\n{a}+{b}\nTarget:"


def result(a: int, b: int) -> str:
  """The expected result line, without its "\\n": digits of a + b separated by spaces."""
  _check_operands(a, b)
  return " ".join(str(a + b))


def scratchpad(a: int, b: int) -> str:
  """The full completion, from "\\n<scratch>\\n" to the "\\n" that ends the result line."""
  return SCRATCH_OPEN + "".join(_scratch_lines(a, b)) + SCRATCH_CLOSE + result(a, b) + "\n"


def extract_result(completion: str) -> str | None:
  """The text between the first "</scratch>\\n" and the next "\\n", or None if either is missing."""
  start = completion.find(SCRATCH_CLOSE)
  if start < 0:
    return None
  start += len(SCRATCH_CLOSE)
  end = completion.find("\n", start)
  if end < 0:
    return None
  return completion[start:end]


def is_correct(completion: str, a: int, b: int) -> bool:
  """The checker of SPEC §4: the completion's result line equals `result(a, b)`."""
  return extract_result(completion) == result(a, b)


def _check_positive(name: str, value: int) -> None:
  if value < 1:
    raise ValueError(f"{name} must be >= 1, got {value}")


def critical_tokens(a: int, b: int, n_max: int) -> list[dict]:
  """The critical tokens of SPEC §6 for a model pre-trained on operands of 1..n_max digits.

  For an operand of L > n_max digits (gap g = L - n_max), in each of the first three scratchpad
  lines: the last g digits of that operand's list and the comma before each, named `n+j_digit` /
  `n+j_comma` with j = g for the digit nearest the `]`. Order: by line, operand 1 before operand 2,
  then n+g digit, n+g comma, n+(g-1) digit, ..., n+1 comma. [ours] A list of g digits or fewer
  (possible only for n_max < 3) lacks some of these characters: those it lacks are left out.

  Args:
    a: first operand.
    b: second operand.
    n_max: largest operand length seen in pre-training (N).

  Returns:
    One dict per critical token with keys `line` (1-based scratchpad line), `operand`
    ("operand_1" or "operand_2"), `name`, `offset` (index into `scratchpad(a, b)`) and `char`.
  """
  _check_positive("n_max", n_max)
  lengths = (len(str(a)), len(str(b)))
  if max(lengths) <= n_max:
    return []  # in distribution: no critical token (and no scratchpad to build, for batches)
  completion = scratchpad(a, b)
  tokens = []
  line_start = len(SCRATCH_OPEN)
  step_lines = _scratch_lines(a, b)[:-1]
  for i, line in enumerate(step_lines[:CRITICAL_LINES]):
    close = -1
    for operand, length in enumerate(lengths):
      close = line.index("]", close + 1)  # This operand's list ends at the next "]".
      listed = length - i  # Digits left in this operand's list on this line.
      gap = length - n_max
      for j in range(gap, 0, -1):
        back = gap - j  # How many digits lie between this one and the "]".
        digit = line_start + close - 1 - 2 * back
        for offset, kind, present in ((digit, "digit", back < listed),
                                      (digit - 1, "comma", back < listed - 1)):
          if present:
            tokens.append({"line": i + 1, "operand": f"operand_{operand + 1}",
                           "name": f"n+{j}_{kind}", "offset": offset, "char": completion[offset]})
    line_start += len(line)
  return tokens


def critical_mask(a: int, b: int, n_max: int) -> np.ndarray:
  """bool [len(scratchpad(a, b))], True at the offsets of `critical_tokens(a, b, n_max)`."""
  mask = np.zeros(len(scratchpad(a, b)), dtype=bool)
  mask[[token["offset"] for token in critical_tokens(a, b, n_max)]] = True
  return mask


def max_completion_length(num_digits: int) -> int:
  """Length of the longest completion for operands of at most `num_digits` digits.

  Two all-9 operands give it: every list is full and every sum has two digits. The RL episode
  length limit is this plus 100 (SPEC §4).
  """
  _check_positive("num_digits", num_digits)
  nines = 10**num_digits - 1
  return len(scratchpad(nines, nines))


# Tokens an RL episode may generate beyond the longest correct completion (SPEC §4).
EPISODE_SLACK = 100


def max_episode_length(num_digits: int) -> int:
  """Episode length limit when the largest operand has `num_digits` digits (SPEC §4)."""
  return max_completion_length(num_digits) + EPISODE_SLACK


def max_sequence_length(num_digits: int) -> int:
  """Length of the longest prompt + completion for operands of at most `num_digits` digits."""
  _check_positive("num_digits", num_digits)
  nines = 10**num_digits - 1
  return len(prompt(nines, nines)) + max_completion_length(num_digits)


def sample_operand(rng: np.random.Generator, num_digits: int | np.ndarray) -> np.ndarray:
  """Draws operands of given lengths: 1 digit uniform in 0..9, k > 1 uniform in [10^(k-1), 10^k).

  Args:
    rng: numpy random generator.
    num_digits: int or int array of any shape, each in 1..MAX_DIGITS.

  Returns:
    int64 array of the shape of `num_digits`.
  """
  lengths = np.asarray(num_digits, dtype=np.int64)
  if lengths.size and (lengths.min() < 1 or lengths.max() > MAX_DIGITS):
    bad = lengths.min() if lengths.min() < 1 else lengths.max()
    raise ValueError(f"operand lengths must lie in 1..{MAX_DIGITS}, got {bad}")
  low = np.where(lengths == 1, 0, 10 ** (lengths - 1))
  return rng.integers(low, 10**lengths, dtype=np.int64)


def sample_balanced(rng: np.random.Generator, num: int, n_max: int) -> np.ndarray:
  """Pre-training problems: each operand's length independently uniform in 1..n_max.

  Returns:
    int64 [num, 2] of (a, b).
  """
  _check_positive("n_max", n_max)
  return sample_operand(rng, rng.integers(1, n_max + 1, size=(num, 2)))


def sample_in_distribution(rng: np.random.Generator, num: int, n_max: int) -> np.ndarray:
  """The RL in-distribution check set: the pre-training distribution (`sample_balanced`).

  Returns:
    int64 [num, 2] of (a, b).
  """
  return sample_balanced(rng, num, n_max)


def sample_identical(rng: np.random.Generator, num: int, digits: int) -> np.ndarray:
  """Evaluation suite "identical": both operands have exactly `digits` digits.

  Returns:
    int64 [num, 2] of (a, b).
  """
  _check_positive("digits", digits)
  return sample_operand(rng, np.full((num, 2), digits))


def _one_long(rng: np.random.Generator, long_length: int, other_lengths: np.ndarray) -> np.ndarray:
  """Operands where one, chosen at random, has `long_length` digits and the other `other_lengths`.

  Args:
    rng: numpy random generator.
    long_length: length of the operand chosen at random.
    other_lengths: int [num], lengths of the other operand.

  Returns:
    int64 [num, 2] of (a, b).
  """
  first_is_long = rng.random(other_lengths.shape) < 0.5
  lengths = np.stack([np.where(first_is_long, long_length, other_lengths),
                      np.where(first_is_long, other_lengths, long_length)], axis=-1)
  return sample_operand(rng, lengths)


def sample_varying(rng: np.random.Generator, num: int, digits: int) -> np.ndarray:
  """Evaluation suite "varying": one operand (at random) has `digits` digits, the other 1..digits.

  Returns:
    int64 [num, 2] of (a, b).
  """
  _check_positive("digits", digits)
  return _one_long(rng, digits, rng.integers(1, digits + 1, size=num))


def sample_rl(rng: np.random.Generator, num: int, n_max: int, k: int) -> np.ndarray:
  """RL problems for "RL on N+k" (SPEC §4).

  One operand (at random) has exactly n_max + k digits; the other, with probability 1/2, a length
  uniform in 1..n_max, otherwise uniform in n_max+1..n_max+k.

  Returns:
    int64 [num, 2] of (a, b).
  """
  _check_positive("n_max", n_max)
  _check_positive("k", k)
  short = rng.integers(1, n_max + 1, size=num)
  long = rng.integers(n_max + 1, n_max + k + 1, size=num)
  other = np.where(rng.random(num) < 0.5, short, long)
  return _one_long(rng, n_max + k, other)


# The evaluation suites of SPEC §3, by name.
SUITES: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "identical": sample_identical,
    "varying": sample_varying,
}


def sample_suite(rng: np.random.Generator, mode: str, num: int, digits: int) -> np.ndarray:
  """Problems of the evaluation suite `mode` ("identical" or "varying") for length `digits`.

  Returns:
    int64 [num, 2] of (a, b).
  """
  if mode not in SUITES:
    raise ValueError(f"unknown suite {mode!r}; expected one of {sorted(SUITES)}")
  return SUITES[mode](rng, num, digits)
