"""What the arithmetic task means to the learner: encoded problems, the episode rules and reward,
correct completions with their masks and critical positions (SPEC §4, §6).

`arithmetic` writes the texts; this module turns them into arrays on the learner's token buffer:

- `Task`: the sizes fixed by the pre-trained model and the RL distribution "N + k";
- `Problems` (`encode_problems`): prompts and expected result lines, what a rollout needs;
- `correct_completions`: prompt + correct completion of each problem, with the completion mask and
  the critical positions: pre-training's batches, RL's correct paths and every teacher-forced
  measurement are built from it;
- `EpisodeRules`: the rules of SPEC §4 as a small automaton per row, handed to the generic rollout
  (`sampling.rollout`) as a static argument. An episode ends when
    1. the scratchpad is closed and the model emits `\\n` (end of the result line);
    2. the model emits the padding token (or another special token of its vocabulary);
    3. it has generated `max_new_tokens` tokens.
  The last token is rewarded +1 if the episode ended by rule 1 with the right result line (the
  rollout gives the others its failure reward); every other token gets 0;
- `Batch` (`collect_batch`): the problems of one RL collect, drawn on the host.
"""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from critical_kl import arithmetic
from critical_kl import tokenizer
from critical_kl import trajectory as trajectory_lib

_CLOSE = "</scratch>\n"


class Task(NamedTuple):
  """Sizes and vocabulary fixed by the pre-trained model and the RL distribution "N + k"."""
  n_max: int
  digits: int  # N + k, the longest operand
  prompt_length: int
  max_new_tokens: int
  vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT


def make_task(n_max: int, extra_digits: int,
              vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT) -> Task:
  digits = n_max + extra_digits
  nines = 10**digits - 1
  return Task(n_max, digits, len(arithmetic.prompt(nines, nines)),
              arithmetic.max_episode_length(digits), vocabulary)


class Problems(NamedTuple):
  """A batch of B problems, encoded.

  Attributes:
    prompts: int32 [B, P], right-padded prompts.
    prompt_lengths: int32 [B].
    expected: int32 [B, R], right-padded expected result lines (without the final newline).
    expected_lengths: int32 [B].
  """
  prompts: jnp.ndarray
  prompt_lengths: jnp.ndarray
  expected: jnp.ndarray
  expected_lengths: jnp.ndarray


def encode_problems(operands: np.ndarray, prompt_length: int | None = None,
                    vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT,
                    result_length: int | None = None) -> Problems:
  """Encodes operands [B, 2] (a, b) as prompts and expected result lines, padded on the right to
  `prompt_length` and `result_length` (default: the longest of the batch)."""
  operands = np.asarray(operands)
  prompts, prompt_lengths = vocabulary.encode_batch(
      [arithmetic.prompt(int(a), int(b)) for a, b in operands], length=prompt_length)
  expected, expected_lengths = vocabulary.encode_batch(
      [arithmetic.result(int(a), int(b)) for a, b in operands], length=result_length)
  return Problems(*(jnp.asarray(x) for x in (prompts, prompt_lengths, expected, expected_lengths)))


def critical_positions(operands: np.ndarray, n_max: int, prompt_lengths, total: int) -> np.ndarray:
  """bool [B, total]: buffer positions of the critical tokens of each problem's correct
  completion (`arithmetic.critical_tokens`), the completion starting at `prompt_lengths` [B]."""
  mask = np.zeros((len(operands), total), bool)
  for row, ((a, b), start) in enumerate(zip(operands, np.asarray(prompt_lengths))):
    offsets = [t["offset"] for t in arithmetic.critical_tokens(int(a), int(b), n_max)]
    mask[row, start + np.asarray(offsets, int)] = True
  return mask


class Completions(NamedTuple):
  """Prompt + correct completion of B problems, on positions 0..L-1.

  Attributes:
    tokens: int32 [B, L], right-padded with the vocabulary's padding.
    prompt_lengths: int [B], where each completion starts.
    lengths: int [B], where each text ends.
    mask: bool [B, L], the completion's positions.
    critical: bool [B, L], the positions of its critical tokens for `n_max` (SPEC §6).
  """
  tokens: np.ndarray
  prompt_lengths: np.ndarray
  lengths: np.ndarray
  mask: np.ndarray
  critical: np.ndarray


def correct_completions(operands: np.ndarray, n_max: int, length: int | None = None,
                        vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT) -> Completions:
  """The correct path of every problem of operands [B, 2]; L = `length`, or the longest text."""
  pairs = [(int(a), int(b)) for a, b in operands]
  prompts = [arithmetic.prompt(a, b) for a, b in pairs]
  texts = [p + arithmetic.scratchpad(a, b) for p, (a, b) in zip(prompts, pairs)]
  tokens, lengths = vocabulary.encode_batch(texts, length=length)
  starts = np.array([len(p) for p in prompts])
  index = np.arange(tokens.shape[1])[None, :]
  mask = (index >= starts[:, None]) & (index < lengths[:, None])
  return Completions(tokens, starts, lengths, mask,
                     critical_positions(pairs, n_max, starts, tokens.shape[1]))


class TeacherSet(NamedTuple):
  """Correct completions of fixed problems for teacher-forced measurements.

  tokens int32 [B, T] (prompt + completion), mask float32 [B, T] on completion tokens,
  critical float32 [B, T] on critical tokens (SPEC §6).
  """
  tokens: np.ndarray
  mask: np.ndarray
  critical: np.ndarray


def teacher_set(operands: np.ndarray, n_max: int,
                vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT) -> TeacherSet:
  done = correct_completions(operands, n_max, vocabulary=vocabulary)
  return TeacherSet(done.tokens, done.mask.astype(np.float32), done.critical.astype(np.float32))


class Batch(NamedTuple):
  """The problems of one collect, on the episode buffer of T = P + max_new_tokens positions.

  Attributes:
    problems: `Problems`, prompts [B, P].
    critical: bool [B, T], the buffer positions of the critical tokens of the correct completion.
    correct: int32 [B, T], prompt + correct completion, −1 after it: the path an episode follows
      while it makes no mistake.
  """
  problems: Problems
  critical: np.ndarray
  correct: np.ndarray


def rl_batch(operands: np.ndarray, task: Task) -> Batch:
  """The `Batch` of operands [B, 2] on the task's episode buffer; every array has the same shape
  for any operands of the task, so that the collects of many runs stack."""
  nines = 10**task.digits - 1
  problems = encode_problems(operands, task.prompt_length, task.vocabulary,
                             result_length=len(arithmetic.result(nines, nines)))
  done = correct_completions(operands, task.n_max, task.prompt_length + task.max_new_tokens,
                             task.vocabulary)
  index = np.arange(done.tokens.shape[1])[None, :]
  correct = np.where(index < done.lengths[:, None], done.tokens, -1).astype(np.int32)
  return Batch(problems, done.critical, correct)


def collect_batch(task: Task, episodes: int, seed: int, run_seed: int, iteration: int) -> Batch:
  """The RL problems ("N + k", SPEC §4) of one run at one iteration: drawn by numpy, keyed by
  (seed, run seed, iteration), so a resumed run sees the problems of an uninterrupted one and the
  arms of a comparison see the same problems for the same run seed."""
  rng = np.random.default_rng([seed, run_seed, iteration])
  return rl_batch(arithmetic.sample_rl(rng, episodes, task.n_max, task.digits - task.n_max), task)


class EpisodeState(NamedTuple):
  """Per-row bookkeeping of the episode rules; every field is [B]. The rollout reads `done`,
  `lengths`, `termination` and `solved`; the others are the automaton's own."""
  done: jnp.ndarray  # bool, the episode has ended
  matched: jnp.ndarray  # int32, characters of `</scratch>\n` matched at the end so far
  closed: jnp.ndarray  # bool, `</scratch>\n` has been generated
  result_pos: jnp.ndarray  # int32, characters of the result line generated
  mismatch: jnp.ndarray  # bool, the result line differs from the expected one
  lengths: jnp.ndarray  # int32, tokens generated
  termination: jnp.ndarray  # int32, why the episode ended
  solved: jnp.ndarray  # bool, it ended with the right result line


@dataclasses.dataclass(frozen=True)
class EpisodeRules:
  """The rules of SPEC §4 over the token ids of one vocabulary (`episode_rules`); hashable, so a
  jitted rollout takes it as a static argument.

  Attributes:
    close: the ids of `</scratch>\\n`.
    newline: the id of `\\n`.
    end_ids: the ids that end an episode when emitted (padding and other special tokens).
    pad_id: the id written after the end of a text.
    vocab_size: the vocabulary's size, to be the model's.
  """
  close: tuple[int, ...]
  newline: int
  end_ids: tuple[int, ...]
  pad_id: int
  vocab_size: int

  def initial(self, batch: int) -> EpisodeState:
    zeros = jnp.zeros(batch, jnp.int32)
    false = jnp.zeros(batch, bool)
    return EpisodeState(false, zeros, false, zeros, false, zeros, zeros, false)

  def step(self, s: EpisodeState, action, step, problems: Problems, max_new_tokens: int
           ) -> tuple[EpisodeState, jnp.ndarray, jnp.ndarray]:
    """Applies the rules to the `step`-th generated token `action` [B] of each row.

    Args:
      s: the state before the token.
      action: int32 [B].
      step: scalar, number of tokens generated before this one.
      problems: their expected result lines, expected [B, R] and expected_lengths [B].
      max_new_tokens: episode length limit.

    Returns:
      (new state, ending bool [B]: this token ends the episode, reward float32 [B] if it does:
      1 for the right result line, 0 otherwise; the caller maps 0 to its failure reward).
    """
    expected, expected_lengths = problems.expected, problems.expected_lengths
    active = ~s.done
    close = jnp.asarray(self.close, jnp.int32)
    ends_result = s.closed & (action == self.newline)
    in_result = s.closed & ~ends_result
    want = jnp.take_along_axis(expected, jnp.minimum(s.result_pos, expected.shape[1] - 1)[:, None],
                               axis=1)[:, 0]
    wrong = (s.result_pos >= expected_lengths) | (want != action)
    mismatch = s.mismatch | (in_result & wrong)
    result_pos = s.result_pos + in_result
    # `<` occurs once in `</scratch>\n`, so on a mismatch the match restarts at 0 or 1.
    next_char = close[jnp.minimum(s.matched, len(self.close) - 1)]
    matched = jnp.where(action == next_char, s.matched + 1, (action == close[0]).astype(jnp.int32))
    closed = s.closed | (matched == len(self.close))
    correct = ends_result & ~mismatch & (result_pos == expected_lengths)
    emitted_end = jnp.isin(action, jnp.asarray(self.end_ids))
    ending = active & (ends_result | emitted_end | (step + 1 >= max_new_tokens))
    cause = jnp.where(ends_result, trajectory_lib.END_OF_RESULT,
                      jnp.where(emitted_end, trajectory_lib.PAD_EMITTED, trajectory_lib.MAX_LENGTH))
    keep = lambda new, old: jnp.where(active, new, old)
    new = EpisodeState(
        done=s.done | ending, matched=keep(matched, s.matched), closed=keep(closed, s.closed),
        result_pos=keep(result_pos, s.result_pos), mismatch=keep(mismatch, s.mismatch),
        lengths=s.lengths + active, termination=keep(cause, s.termination),
        solved=s.solved | (ending & correct))
    return new, ending, correct.astype(jnp.float32)


def episode_rules(vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT) -> EpisodeRules:
  """The rules over the ids of `vocabulary` (the model's)."""
  return EpisodeRules(close=tuple(int(i) for i in vocabulary.encode(_CLOSE)),
                      newline=vocabulary.token_id("\n"), end_ids=tuple(vocabulary.end_ids),
                      pad_id=vocabulary.pad_id, vocab_size=len(vocabulary))


# The rules of the shipped vocabulary.
RULES = episode_rules()


def score_tokens(tokens, expected, expected_lengths, max_new_tokens: int,
                 rules: EpisodeRules = RULES) -> EpisodeState:
  """Runs the episode rules over given generated tokens [B, L] (L ≥ max_new_tokens or the rows
  end before L) of problems with these expected result lines, expected [B, R] and
  expected_lengths [B]; the final state says where and why each episode ended."""
  problems = Problems(None, None, expected, expected_lengths)

  def body(s, inputs):
    step, action = inputs
    return rules.step(s, action, step, problems, max_new_tokens)[0], None
  steps = jnp.arange(tokens.shape[1])
  final, _ = jax.lax.scan(body, rules.initial(tokens.shape[0]), (steps, tokens.T))
  return final
