"""Batched rollouts with the KV cache: greedy or temperature sampling, with the episode rules of SPEC §4.

The whole episode runs inside `lax.while_loop`s (fixed shapes, no return to Python per token), a few
consecutive ones over a KV cache grown between them (`SEGMENTS`), and stops as soon as every row
has ended. Each row keeps a tiny automaton over the tokens it generates:
how much of `</scratch>\\n` it has matched, whether the scratchpad is closed, and whether the result
line so far agrees with the expected one. An episode ends (SPEC §4) when
  1. the scratchpad is closed and the model emits `\\n` (end of the result line);
  2. the model emits the padding token (or another special token of its vocabulary, e.g. an end
     token);
  3. it has generated `max_new_tokens` tokens.
The last token gets reward +1 if the episode ended by rule 1 with the right result line, else
`failure_reward` (−1 in training); every other token gets 0.

The token ids of these rules (`</scratch>\\n`, newline, padding) come from the model's vocabulary
(`tokenizer.Vocabulary`), the shipped table by default.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from critical_kl import arithmetic
from critical_kl import model as model_lib
from critical_kl import tokenizer
from critical_kl import trajectory as trajectory_lib

_CLOSE = "</scratch>\n"


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
                    vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT) -> Problems:
  """Encodes operands [B, 2] (a, b) as prompts and expected result lines."""
  operands = np.asarray(operands)
  prompts, prompt_lengths = vocabulary.encode_batch(
      [arithmetic.prompt(int(a), int(b)) for a, b in operands], length=prompt_length)
  expected, expected_lengths = vocabulary.encode_batch(
      [arithmetic.result(int(a), int(b)) for a, b in operands])
  return Problems(*(jnp.asarray(x) for x in (prompts, prompt_lengths, expected, expected_lengths)))


class EpisodeState(NamedTuple):
  """Per-row bookkeeping of the episode rules; every field is [B]."""
  done: jnp.ndarray  # bool, the episode has ended
  matched: jnp.ndarray  # int32, characters of `</scratch>\n` matched at the end so far
  closed: jnp.ndarray  # bool, `</scratch>\n` has been generated
  result_pos: jnp.ndarray  # int32, characters of the result line generated
  mismatch: jnp.ndarray  # bool, the result line differs from the expected one
  lengths: jnp.ndarray  # int32, tokens generated
  termination: jnp.ndarray  # int32, why the episode ended
  solved: jnp.ndarray  # bool, it ended with the right result line


def initial_episode_state(batch: int) -> EpisodeState:
  zeros = jnp.zeros(batch, jnp.int32)
  false = jnp.zeros(batch, bool)
  return EpisodeState(false, zeros, false, zeros, false, zeros, zeros, false)


def step_episode(s: EpisodeState, action, step, expected, expected_lengths, max_new_tokens: int,
                 vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT
                 ) -> tuple[EpisodeState, jnp.ndarray, jnp.ndarray]:
  """Applies the rules of SPEC §4 to the `step`-th generated token `action` [B] of each row.

  Args:
    s: the state before the token.
    action: int32 [B].
    step: scalar, number of tokens generated before this one.
    expected: int32 [B, R], expected result lines; expected_lengths: int32 [B].
    max_new_tokens: episode length limit.
    vocabulary: the model's vocabulary.

  Returns:
    (new state, ending bool [B]: this token ends the episode, reward float32 [B] if it does:
    1 for the right result line, 0 otherwise; the caller maps 0 to its failure reward).
  """
  active = ~s.done
  close = jnp.asarray(vocabulary.encode(_CLOSE))
  ends_result = s.closed & (action == vocabulary.token_id("\n"))
  in_result = s.closed & ~ends_result
  want = jnp.take_along_axis(expected, jnp.minimum(s.result_pos, expected.shape[1] - 1)[:, None],
                             axis=1)[:, 0]
  wrong = (s.result_pos >= expected_lengths) | (want != action)
  mismatch = s.mismatch | (in_result & wrong)
  result_pos = s.result_pos + in_result
  # `<` occurs once in `</scratch>\n`, so on a mismatch the match restarts at 0 or 1.
  next_char = close[jnp.minimum(s.matched, len(_CLOSE) - 1)]
  matched = jnp.where(action == next_char, s.matched + 1, (action == close[0]).astype(jnp.int32))
  closed = s.closed | (matched == len(_CLOSE))
  correct = ends_result & ~mismatch & (result_pos == expected_lengths)
  emitted_end = jnp.isin(action, jnp.asarray(vocabulary.end_ids))
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


def score_tokens(tokens, expected, expected_lengths, max_new_tokens: int,
                 vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT) -> EpisodeState:
  """Runs the episode rules over given generated tokens [B, L] (L ≥ max_new_tokens or the rows
  end before L); the final state says where and why each episode ended."""
  def body(s, inputs):
    step, action = inputs
    return step_episode(s, action, step, expected, expected_lengths, max_new_tokens,
                        vocabulary)[0], None
  steps = jnp.arange(tokens.shape[1])
  final, _ = jax.lax.scan(body, initial_episode_state(tokens.shape[0]), (steps, tokens.T))
  return final


class _State(NamedTuple):
  step: jnp.ndarray  # scalar int32, tokens generated so far by the longest-running rows
  key: jax.Array
  logits: jnp.ndarray  # [B, V], next-token logits
  value: jnp.ndarray  # [B], value of the current prefix
  cache: tuple
  episode: EpisodeState
  tokens: jnp.ndarray  # [B, T]
  logp: jnp.ndarray  # [B, T]
  values: jnp.ndarray  # [B, T]
  entropy: jnp.ndarray  # [B, T]
  rewards: jnp.ndarray  # [B, T]


def _choose(key, logits, temperature: float, greedy: bool):
  """Picks tokens [B] and returns them with their log-prob and the entropy at `temperature`."""
  logp_all = jax.nn.log_softmax(logits / temperature, axis=-1)
  if greedy:
    action = jnp.argmax(logits, axis=-1)
  else:
    action = jax.random.categorical(key, logp_all, axis=-1)
  logp = jnp.take_along_axis(logp_all, action[:, None], axis=-1)[:, 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  return action.astype(jnp.int32), logp, entropy


def _put(buffer, pos, value, where):
  """buffer[b, pos[b]] = value[b] for rows where `where[b]`."""
  rows = jnp.arange(buffer.shape[0])
  return buffer.at[rows, pos].set(jnp.where(where, value, buffer[rows, pos]))


# Pieces of the episode with a KV cache of their own length (see `rollout`'s `segments`).
SEGMENTS = 4


def segment_ends(max_new_tokens: int, segments: int) -> list[int]:
  """Steps at which each piece of a `segments`-piece rollout ends: increasing, the last one
  `max_new_tokens`, no empty piece."""
  if segments < 1:
    raise ValueError(f"segments must be >= 1, got {segments}")
  return sorted({-(-max_new_tokens * (j + 1) // segments) for j in range(segments)})


def _grow(cache: tuple, length: int) -> tuple:
  """The KV cache with zero positions appended up to `length` (axis 2 of [B, H, S, D])."""
  grow = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)))
  return jax.tree_util.tree_map(grow, cache)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "temperature", "greedy",
                                             "failure_reward", "axis_name", "vocabulary",
                                             "segments"))
def rollout(params, config: model_lib.GPTConfig, problems: Problems, key: jax.Array, *,
            max_new_tokens: int, temperature: float = 1.0, greedy: bool = False,
            failure_reward: float = -1.0, axis_name: str | None = None,
            vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT,
            segments: int = SEGMENTS) -> trajectory_lib.Trajectory:
  """Generates one episode per problem.

  Args:
    params: GPT parameters.
    config: the GPT's config.
    problems: B encoded problems; prompts [B, P].
    key: PRNG key (unused when greedy).
    max_new_tokens: episode length limit; the buffer holds T = P + max_new_tokens tokens.
    temperature: τ of the sampling policy; log-probs and entropies are taken at τ.
    greedy: pick the most likely token instead of sampling.
    failure_reward: reward of an episode that does not end with the right result line.
    axis_name: when the rollout is vmapped over runs with this `axis_name`, the loop stops once
      every run's episodes have ended. Without it the stopping test differs between runs, and
      vmap turns the loop into one that selects between old and new state at every step, which
      copies the whole KV cache per token (several times slower). The results are the same.
    vocabulary: the model's vocabulary (the one `problems` were encoded with); its size must be
      the model's `vocab_size`.
    segments: the episode runs as this many consecutive loops, each over a KV cache only as long
      as the positions it can reach (P + the piece's last step), grown with zeros between them.
      Each decoded token's attention reads the whole cache, so this cuts the memory traffic of
      attention, the larger part of a step's time on CPU, by about (segments − 1) / (2·segments)
      of what a single loop over the full-length cache reads. The masked positions add exact
      zeros either way; only the summation order over the positions differs. Each piece is its
      own loop in the compiled program.

  Returns:
    A `Trajectory` over [B, T]; its reference fields (ref_logp, certainty, critical) are zeros,
    to be filled by a teacher-forced pass of the reference model.
  """
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  if len(vocabulary) != config.vocab_size:
    raise ValueError(f"a vocabulary of {len(vocabulary)} tokens for a model of vocab_size "
                     f"{config.vocab_size}: pass the model's own vocabulary")
  batch, prompt_len = problems.prompts.shape
  total = prompt_len + max_new_tokens
  if total > config.block_size:
    raise ValueError(f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) exceeds the "
                     f"model's block_size ({config.block_size})")
  pad = jnp.full((batch, max_new_tokens), vocabulary.pad_id, jnp.int32)
  tokens = jnp.concatenate([problems.prompts.astype(jnp.int32), pad], axis=1)
  ends = segment_ends(max_new_tokens, segments)
  cache = model_lib.init_cache(config, batch, prompt_len + ends[0])
  out = model_lib.decode(params, config, problems.prompts, cache, jnp.zeros(batch, jnp.int32))
  last = (problems.prompt_lengths - 1)[:, None]
  zeros = jnp.zeros((batch, total), jnp.float32)
  init = _State(
      step=jnp.int32(0), key=key,
      logits=jnp.take_along_axis(out.logits, last[:, :, None], axis=1)[:, 0],
      value=jnp.take_along_axis(out.values, last, axis=1)[:, 0], cache=out.cache,
      episode=initial_episode_state(batch), tokens=tokens, logp=zeros, values=zeros,
      entropy=zeros, rewards=zeros)

  def running(s: _State, end: int):
    all_done = jnp.all(s.episode.done)
    if axis_name is not None:
      all_done = jax.lax.pmin(all_done.astype(jnp.int32), axis_name) > 0
    return (s.step < end) & ~all_done

  def body(s: _State):
    key, sub = jax.random.split(s.key)
    action, logp, entropy = _choose(sub, s.logits, temperature, greedy)
    active = ~s.episode.done
    pos = problems.prompt_lengths + s.step
    episode, ending, correct = step_episode(s.episode, action, s.step, problems.expected,
                                            problems.expected_lengths, max_new_tokens, vocabulary)
    reward = jnp.where(correct > 0, 1.0, failure_reward)
    out = model_lib.decode(params, config, action[:, None], s.cache, pos)
    return _State(
        step=s.step + 1, key=key, logits=out.logits[:, 0], value=out.values[:, 0],
        cache=out.cache, episode=episode, tokens=_put(s.tokens, pos, action, active),
        logp=_put(s.logp, pos, logp, active), values=_put(s.values, pos, s.value, active),
        entropy=_put(s.entropy, pos, entropy, active),
        rewards=_put(s.rewards, pos, reward, ending))

  s = init
  for i, end in enumerate(ends):
    if i:
      s = s._replace(cache=_grow(s.cache, prompt_len + end))
    s = jax.lax.while_loop(functools.partial(running, end=end), body, s)
  episode = s.episode
  positions = jnp.arange(total)[None, :]
  start = problems.prompt_lengths[:, None]
  mask = ((positions >= start) & (positions < start + episode.lengths[:, None]))
  return trajectory_lib.Trajectory(
      tokens=s.tokens, mask=mask.astype(jnp.float32), logp=s.logp, values=s.values,
      entropy=s.entropy, rewards=s.rewards, prompt_lengths=problems.prompt_lengths,
      lengths=episode.lengths, termination=episode.termination, solved=episode.solved,
      ref_logp=zeros, certainty=zeros, critical=jnp.zeros((batch, total), bool))


def completions(traj: trajectory_lib.Trajectory,
                vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT) -> list[str]:
  """Decodes the generated text of each episode."""
  tokens, start, length = (np.asarray(x) for x in (traj.tokens, traj.prompt_lengths, traj.lengths))
  return [vocabulary.decode(row[s:s + n]) for row, s, n in zip(tokens, start, length)]
