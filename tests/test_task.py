"""The task on the learner's buffer: sizes, correct completions with masks and critical positions,
RL batches drawn per (seed, run, iteration), and the episode rules as a static value."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critical_kl import arithmetic
from critical_kl import pretrain
from critical_kl import pretrain_config
from critical_kl import task as task_lib
from critical_kl import tokenizer
from critical_kl import trajectory as trajectory_lib
from critical_kl.configs import pretrain_default

OPERANDS = np.array([[123, 45], [7, 8]])


def test_make_task_sizes():
  task = task_lib.make_task(2, 1)
  assert task.digits == 3
  assert task.prompt_length == len("Input:\n999+999\nTarget:")
  assert task.max_new_tokens == arithmetic.max_episode_length(3)


def test_correct_completions_golden():
  done = task_lib.correct_completions(OPERANDS, n_max=2)
  assert done.tokens.dtype == np.int32 and done.tokens.shape[0] == 2
  for row, (a, b) in enumerate(OPERANDS):
    start, end = int(done.prompt_lengths[row]), int(done.lengths[row])
    assert start == len(arithmetic.prompt(a, b))
    assert tokenizer.decode(done.tokens[row, :start]) == arithmetic.prompt(a, b)
    assert tokenizer.decode(done.tokens[row][done.mask[row]]) == arithmetic.scratchpad(a, b)
    assert (done.tokens[row, end:] == tokenizer.PAD_ID).all()
  # 123 has one digit more than N = 2: its critical tokens (SPEC §6) sit after the prompt.
  offsets = [t["offset"] for t in arithmetic.critical_tokens(123, 45, 2)]
  assert sorted(np.flatnonzero(done.critical[0]) - done.prompt_lengths[0]) == sorted(offsets)
  assert not done.critical[1].any()  # 7 + 8 is in-distribution: nothing is critical
  assert not (done.critical & ~done.mask).any()


def test_correct_completions_on_a_fixed_length():
  longest = task_lib.correct_completions(OPERANDS, n_max=2)
  fixed = task_lib.correct_completions(OPERANDS, n_max=2, length=300)
  width = longest.tokens.shape[1]
  assert fixed.tokens.shape == (2, 300)
  np.testing.assert_array_equal(fixed.tokens[:, :width], longest.tokens)
  np.testing.assert_array_equal(fixed.critical[:, :width], longest.critical)
  assert not fixed.mask[:, width:].any()


def test_rl_batch_holds_the_correct_path():
  task = task_lib.make_task(2, 1)
  batch = task_lib.rl_batch(OPERANDS, task)
  total = task.prompt_length + task.max_new_tokens
  assert batch.correct.shape == batch.critical.shape == (2, total)
  assert batch.problems.prompts.shape == (2, task.prompt_length)
  done = task_lib.correct_completions(OPERANDS, 2, total)
  np.testing.assert_array_equal(batch.critical, done.critical)
  for row in range(2):
    end = int(done.lengths[row])
    np.testing.assert_array_equal(batch.correct[row, :end], done.tokens[row, :end])
    assert (batch.correct[row, end:] == -1).all()
  assert tokenizer.decode(np.asarray(batch.problems.expected[0])[:5]) == "1 6 8"


def test_rl_batches_of_a_task_have_one_shape():
  """Runs stack their collects: a batch whose longest result is short is padded like any other."""
  task = task_lib.make_task(2, 1)
  short, long = (task_lib.rl_batch(np.array(ops), task) for ops in ([[100, 1], [5, 7]],
                                                                     [[999, 99], [1, 2]]))
  for a, b in zip(jax.tree_util.tree_leaves(short), jax.tree_util.tree_leaves(long)):
    assert a.shape == b.shape
  assert short.problems.expected.shape[1] == len(arithmetic.result(999, 999))
  np.testing.assert_array_equal(short.problems.expected_lengths,
                                [len(arithmetic.result(100, 1)), len(arithmetic.result(5, 7))])


def test_teacher_set_is_the_completions_as_floats():
  done = task_lib.correct_completions(OPERANDS, 2)
  teacher = task_lib.teacher_set(OPERANDS, 2)
  assert teacher.mask.dtype == teacher.critical.dtype == np.float32
  np.testing.assert_array_equal(teacher.tokens, done.tokens)
  np.testing.assert_array_equal(teacher.mask, done.mask)
  np.testing.assert_array_equal(teacher.critical, done.critical)


def test_pretrain_batches_use_the_same_completions():
  c = pretrain_default.get_config()
  c.update(pretrain_max_digits=2, batch_size=4, random_start_positions=False)
  typed = pretrain_config.PretrainConfig.from_config_dict(c)
  tokens, _, mask = pretrain.make_batch(typed, 3)
  for row in range(4):
    text = tokenizer.decode(tokens[row])
    a, b = (int(x) for x in text.split("\n")[1].split("+"))
    done = task_lib.correct_completions(np.array([[a, b]]), 2, tokens.shape[1])
    np.testing.assert_array_equal(tokens[row], done.tokens[0])
    np.testing.assert_array_equal(mask[row], done.mask[0])


def test_collect_batch_is_keyed_by_seed_run_and_iteration():
  task = task_lib.make_task(2, 1)
  draw = lambda *key: task_lib.collect_batch(task, 6, *key).problems.prompts
  np.testing.assert_array_equal(draw(0, 1, 2), draw(0, 1, 2))
  for other in ((1, 1, 2), (0, 0, 2), (0, 1, 3)):
    assert not np.array_equal(draw(0, 1, 2), draw(*other))
  prompts = [tokenizer.decode(row) for row in np.asarray(draw(0, 1, 2))]
  # "N + k": one operand of each problem has exactly N + k = 3 digits.
  assert all(3 in [len(x) for x in p.split("\n")[1].split("+")] for p in prompts)


def test_episode_rules_are_static_values_of_a_vocabulary():
  rules = task_lib.episode_rules(tokenizer.DEFAULT)
  assert rules == task_lib.RULES and hash(rules) == hash(task_lib.RULES)
  assert rules.close == tuple(tokenizer.encode("</scratch>\n").tolist())
  assert rules.newline == tokenizer.NEWLINE_ID and rules.pad_id == tokenizer.PAD_ID
  assert rules.vocab_size == tokenizer.VOCAB_SIZE
  with pytest.raises(dataclasses.FrozenInstanceError):
    rules.pad_id = 3
  # Another vocabulary (an end token appended, padding moved) gives other ids.
  other = tokenizer.Vocabulary(tokenizer.DEFAULT.tokens[1:] + ("<pad>", "<eot>"),
                               pad_id=len(tokenizer.DEFAULT.tokens) - 1)
  theirs = task_lib.episode_rules(other)
  assert theirs.close == tuple(t - 1 for t in rules.close)
  assert theirs.end_ids == (other.pad_id, other.pad_id + 1)


def test_score_tokens_rewards_the_correct_completion_only():
  expected, expected_lengths = tokenizer.encode_batch(["1 6 8", "1 6 8"])
  right = arithmetic.scratchpad(123, 45)
  texts = [right, right.replace("1 6 8\n", "1 6 9\n")]
  tokens, _ = tokenizer.encode_batch(texts, length=len(right) + 4)
  final = task_lib.score_tokens(jnp.asarray(tokens), jnp.asarray(expected),
                                jnp.asarray(expected_lengths), len(right) + 4)
  assert np.asarray(final.solved).tolist() == [True, False]
  assert np.asarray(final.lengths).tolist() == [len(right)] * 2
  assert (np.asarray(final.termination) == trajectory_lib.END_OF_RESULT).all()
