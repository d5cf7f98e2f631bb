"""Rollouts: the task's episode rules against a plain-Python reading of SPEC §4, and the sampler."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critical_kl import arithmetic
from critical_kl import model as model_lib
from critical_kl import sampling
from critical_kl import task as task_lib
from critical_kl import tokenizer
from critical_kl import trajectory as trajectory_lib
from conftest import loop_predicate_shapes  # tests/ is on sys.path under pytest

CLOSE = "</scratch>\n"


def python_episode(generated: list[int], expected: str, max_new_tokens: int):
  """SPEC §4 in plain Python: (length, cause, solved) of an episode generating these tokens."""
  text = ""
  for i, token in enumerate(generated):
    char = "" if token == tokenizer.PAD_ID else tokenizer.CHARS[token - 1]
    if CLOSE in text and char == "\n":
      result = text[text.index(CLOSE) + len(CLOSE):]
      return i + 1, trajectory_lib.END_OF_RESULT, result == expected
    if token == tokenizer.PAD_ID:
      return i + 1, trajectory_lib.PAD_EMITTED, False
    text += char
    if i + 1 >= max_new_tokens:
      return i + 1, trajectory_lib.MAX_LENGTH, False
  raise ValueError("the episode did not end within the given tokens")


def _score(texts_or_tokens, expected: list[str], max_new_tokens: int):
  rows = [tokenizer.encode(t) if isinstance(t, str) else np.asarray(t) for t in texts_or_tokens]
  width = max(max_new_tokens, max(len(r) for r in rows))
  tokens = np.full((len(rows), width), tokenizer.PAD_ID, np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  exp, exp_len = tokenizer.encode_batch(expected)
  final = task_lib.score_tokens(jnp.asarray(tokens), jnp.asarray(exp), jnp.asarray(exp_len),
                                max_new_tokens)
  ours = list(zip(np.asarray(final.lengths), np.asarray(final.termination),
                  np.asarray(final.solved)))
  theirs = [python_episode(list(t), e, max_new_tokens) for t, e in zip(tokens, expected)]
  return ours, theirs


def test_every_termination_cause_matches_python():
  right = arithmetic.scratchpad(5876, 393)
  expected = arithmetic.result(5876, 393)
  cases = [
      right,  # solved
      right.replace("6 2 6 9\n", "6 2 6 8\n"),  # wrong result line
      right.replace("6 2 6 9\n", "6 2 6 9 9\n"),  # result too long
      right.replace("6 2 6 9\n", "6 2 6\n"),  # result too short
      right[:40],  # runs into the length limit (no PAD: filled below with digits)
      right[:50] + "\0",  # PAD emitted mid-scratchpad
      "\n</scratch>\n</scratch>\n6 2 6 9\n",  # the line after the first close is the result
      "</scr</scratch>\n6 2 6 9\n",  # a broken close, then a real one
      "\n6 2 6 9\n</scratch>\n6 2 6 9\n",  # newlines before the close do not end it
  ]
  rows = []
  for c in cases:
    if c.endswith("\0"):
      rows.append(np.concatenate([tokenizer.encode(c[:-1]), [tokenizer.PAD_ID]]))
    elif c == right[:40]:
      rows.append(np.concatenate([tokenizer.encode(c), tokenizer.encode("7" * 400)]))
    else:
      rows.append(c)
  ours, theirs = _score(rows, [expected] * len(rows), max_new_tokens=300)
  for o, t in zip(ours, theirs):
    assert (int(o[0]), int(o[1]), bool(o[2])) == t
  causes = {int(o[1]) for o in ours}
  assert causes == {trajectory_lib.END_OF_RESULT, trajectory_lib.PAD_EMITTED,
                    trajectory_lib.MAX_LENGTH}
  assert [bool(o[2]) for o in ours] == [True, False, False, False, False, False, False, True, True]


def test_random_token_sequences_match_python():
  rng = np.random.default_rng(0)
  # Random text biased towards the closing tag, newlines and digits, so every rule is exercised.
  pieces = [CLOSE, "\n", "1", "2", " ", "</", "scratch>", "\0"]
  rows, expected = [], []
  for _ in range(200):
    text = "".join(rng.choice(pieces, size=rng.integers(1, 12)))
    ids = [tokenizer.PAD_ID if ch == "\0" else tokenizer.token_id(ch) for ch in text]
    rows.append(np.array(ids + [tokenizer.token_id("7")] * 60, np.int32))
    expected.append(rng.choice(["1", "1 2", "2 1", "12"]))
  ours, theirs = _score(rows, expected, max_new_tokens=int(rng.integers(5, 40)))
  for o, t in zip(ours, theirs):
    assert (int(o[0]), int(o[1]), bool(o[2])) == t


RULES = task_lib.RULES
TINY = model_lib.GPTConfig(block_size=128, n_layer=1, n_head=2, n_embd=16, value_hidden=8)


def _problems():
  operands = np.array([[12, 5], [3, 4], [99, 1]])
  return operands, task_lib.encode_problems(operands, prompt_length=20)


def test_rollout_shapes_and_masks():
  params = model_lib.init_params(TINY, jax.random.key(0))
  _, problems = _problems()
  traj = sampling.rollout(params, TINY, problems, jax.random.key(1), rules=RULES,
                          max_new_tokens=30, temperature=2.0)
  assert traj.tokens.shape == (3, 50) and traj.mask.shape == (3, 50)
  np.testing.assert_array_equal(traj.mask.sum(axis=1), traj.lengths)
  for row, p in enumerate(np.asarray(problems.prompt_lengths)):
    np.testing.assert_array_equal(traj.tokens[row, :p], problems.prompts[row, :p])
  # Rewards sit on the last generated token only, ±1.
  last = np.asarray(traj.prompt_lengths + traj.lengths - 1)
  rewards = np.asarray(traj.rewards)
  assert np.all(np.abs(rewards[np.arange(3), last]) == 1.0)
  assert np.count_nonzero(rewards) == 3
  # The JAX rules applied to the rollout's own tokens give the same outcome.
  gen = np.stack([np.asarray(traj.tokens)[i, s:s + 30] for i, s in enumerate(traj.prompt_lengths)])
  final = task_lib.score_tokens(jnp.asarray(gen), problems.expected, problems.expected_lengths, 30)
  np.testing.assert_array_equal(final.lengths, traj.lengths)
  np.testing.assert_array_equal(final.termination, traj.termination)


def test_logp_and_values_match_teacher_forcing():
  params = model_lib.init_params(TINY, jax.random.key(0))
  _, problems = _problems()
  traj = sampling.rollout(params, TINY, problems, jax.random.key(3), rules=RULES,
                          max_new_tokens=30, temperature=2.0)
  out = model_lib.forward(params, TINY, traj.tokens)
  logits = trajectory_lib.align_to_tokens(out.logits)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits / 2.0), traj.tokens[..., None], -1)[..., 0]
  values = trajectory_lib.align_to_tokens(out.values)
  m = np.asarray(traj.mask) > 0
  np.testing.assert_allclose(np.asarray(logp)[m], np.asarray(traj.logp)[m], atol=1e-4)
  np.testing.assert_allclose(np.asarray(values)[m], np.asarray(traj.values)[m], atol=1e-4)


def test_greedy_is_deterministic_and_sampling_depends_on_key():
  params = model_lib.init_params(TINY, jax.random.key(0))
  _, problems = _problems()
  run = lambda key, greedy: sampling.rollout(params, TINY, problems, key, rules=RULES,
                                             max_new_tokens=30, temperature=3.0,
                                             greedy=greedy).tokens
  np.testing.assert_array_equal(run(jax.random.key(1), True), run(jax.random.key(2), True))
  np.testing.assert_array_equal(run(jax.random.key(1), False), run(jax.random.key(1), False))
  assert not np.array_equal(run(jax.random.key(1), False), run(jax.random.key(2), False))


def test_rollout_vmapped_over_runs_with_axis_name():
  """Named runs axis: same episodes as one run at a time, and one loop predicate for all runs
  (unnamed, vmap batches the predicate and XLA then selects the whole carry at every step)."""
  keys = jax.random.split(jax.random.key(0), 2)
  params = jax.vmap(lambda k: model_lib.init_params(TINY, k))(keys)
  _, problems = _problems()
  runs = lambda axis_name: jax.vmap(
      lambda p, k: sampling.rollout(p, TINY, problems, k, rules=RULES, max_new_tokens=30,
                                    temperature=2.0, axis_name=axis_name),
      axis_name="runs")
  together = runs("runs")(params, keys)
  for r in range(2):
    alone = sampling.rollout(jax.tree_util.tree_map(lambda x: x[r], params), TINY, problems,
                             keys[r], rules=RULES, max_new_tokens=30, temperature=2.0)
    np.testing.assert_array_equal(together.tokens[r], alone.tokens)
    np.testing.assert_array_equal(together.lengths[r], alone.lengths)
    np.testing.assert_allclose(together.logp[r], alone.logp, atol=1e-5)
  pieces = len(sampling.segment_ends(30, sampling.SEGMENTS))
  assert loop_predicate_shapes(jax.make_jaxpr(runs("runs"))(params, keys).jaxpr) == [()] * pieces
  assert loop_predicate_shapes(jax.make_jaxpr(runs(None))(params, keys).jaxpr) == [(2,)] * pieces


def test_segment_ends_cover_the_episode_without_empty_pieces():
  assert sampling.segment_ends(389, 4) == [98, 195, 292, 389]
  assert sampling.segment_ends(3, 8) == [1, 2, 3]
  assert sampling.segment_ends(10, 1) == [10]
  with pytest.raises(ValueError, match="segments"):
    sampling.segment_ends(10, 0)


@pytest.mark.parametrize("greedy", [True, False])
def test_segmented_cache_gives_the_episodes_of_one_full_length_cache(greedy):
  """The pieces' shorter caches only drop masked positions: same tokens, lengths and rewards,
  log-probs and values equal to float tolerance (the softmax sums in another order)."""
  params = model_lib.init_params(TINY, jax.random.key(3))
  _, problems = _problems()
  one, four = (sampling.rollout(params, TINY, problems, jax.random.key(4), rules=RULES,
                                max_new_tokens=40, temperature=2.0, greedy=greedy, segments=n)
               for n in (1, 4))
  for field in ("tokens", "lengths", "rewards", "termination", "mask"):
    np.testing.assert_array_equal(getattr(four, field), getattr(one, field), err_msg=field)
  for field in ("logp", "values", "entropy"):
    np.testing.assert_allclose(getattr(four, field), getattr(one, field), atol=1e-5, rtol=1e-5,
                               err_msg=field)


def test_context_overflow_and_bad_temperature_raise():
  params = model_lib.init_params(TINY, jax.random.key(0))
  _, problems = _problems()
  with pytest.raises(ValueError, match="block_size"):
    sampling.rollout(params, TINY, problems, jax.random.key(0), rules=RULES,
                     max_new_tokens=200)
  with pytest.raises(ValueError, match="temperature"):
    sampling.rollout(params, TINY, problems, jax.random.key(0), rules=RULES, max_new_tokens=10,
                     temperature=0.0)
