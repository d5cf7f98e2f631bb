"""Batched rollouts with the KV cache: greedy or temperature sampling, under the task's episode rules.

The whole episode runs inside `lax.while_loop`s (fixed shapes, no return to Python per token), a few
consecutive ones over a KV cache grown between them (`SEGMENTS`), and stops as soon as every row
has ended. What ends an episode and what it earns is the task's (`task.EpisodeRules`, a static
argument): each row keeps the rules' automaton over the tokens it generates, and the last token
gets reward +1 when the rules call the episode solved, else `failure_reward` (−1 in training);
every other token gets 0.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from critical_kl import model as model_lib
from critical_kl import tokenizer
from critical_kl import trajectory as trajectory_lib


class _State(NamedTuple):
  step: jnp.ndarray  # scalar int32, tokens generated so far by the longest-running rows
  key: jax.Array
  logits: jnp.ndarray  # [B, V], next-token logits
  value: jnp.ndarray  # [B], value of the current prefix
  cache: tuple
  episode: NamedTuple  # the rules' per-row state (`task.EpisodeState`)
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


@functools.partial(jax.jit, static_argnames=("gpt", "max_new_tokens", "temperature", "greedy",
                                             "failure_reward", "axis_name", "rules",
                                             "segments"))
def rollout(params, gpt: model_lib.GPTConfig, problems, key: jax.Array, *, rules,
            max_new_tokens: int, temperature: float = 1.0, greedy: bool = False,
            failure_reward: float = -1.0, axis_name: str | None = None,
            segments: int = SEGMENTS) -> trajectory_lib.Trajectory:
  """Generates one episode per problem.

  Args:
    params: GPT parameters.
    gpt: the GPT's config.
    problems: B encoded problems (e.g. `task.Problems`): prompts [B, P], prompt_lengths [B] and
      whatever `rules.step` reads.
    key: PRNG key (unused when greedy).
    rules: the episode rules (e.g. `task.episode_rules(vocabulary)`), hashable: `initial(B)` gives
      the per-row state, with fields done, lengths, termination and solved [B];
      `step(state, action, step, problems, max_new_tokens)` gives (state, ending [B], correct
      [B]); `pad_id` fills the buffer after the prompt; `vocab_size` must be the model's.
    max_new_tokens: episode length limit; the buffer holds T = P + max_new_tokens tokens.
    temperature: τ of the sampling policy; log-probs and entropies are taken at τ.
    greedy: pick the most likely token instead of sampling.
    failure_reward: reward of an episode that does not end with the right result line.
    axis_name: when the rollout is vmapped over runs with this `axis_name`, the loop stops once
      every run's episodes have ended. Without it the stopping test differs between runs, and
      vmap turns the loop into one that selects between old and new state at every step, which
      copies the whole KV cache per token (several times slower). The results are the same.
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
  if rules.vocab_size != gpt.vocab_size:
    raise ValueError(f"a vocabulary of {rules.vocab_size} tokens for a model of vocab_size "
                     f"{gpt.vocab_size}: pass the model's own vocabulary")
  batch, prompt_len = problems.prompts.shape
  total = prompt_len + max_new_tokens
  if total > gpt.block_size:
    raise ValueError(f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) exceeds the "
                     f"model's block_size ({gpt.block_size})")
  pad = jnp.full((batch, max_new_tokens), rules.pad_id, jnp.int32)
  tokens = jnp.concatenate([problems.prompts.astype(jnp.int32), pad], axis=1)
  ends = segment_ends(max_new_tokens, segments)
  cache = model_lib.init_cache(gpt, batch, prompt_len + ends[0])
  out = model_lib.decode(params, gpt, problems.prompts, cache, jnp.zeros(batch, jnp.int32))
  last = (problems.prompt_lengths - 1)[:, None]
  zeros = jnp.zeros((batch, total), jnp.float32)
  init = _State(
      step=jnp.int32(0), key=key,
      logits=jnp.take_along_axis(out.logits, last[:, :, None], axis=1)[:, 0],
      value=jnp.take_along_axis(out.values, last, axis=1)[:, 0], cache=out.cache,
      episode=rules.initial(batch), tokens=tokens, logp=zeros, values=zeros,
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
    episode, ending, correct = rules.step(s.episode, action, s.step, problems, max_new_tokens)
    reward = jnp.where(correct > 0, 1.0, failure_reward)
    out = model_lib.decode(params, gpt, action[:, None], s.cache, pos)
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
