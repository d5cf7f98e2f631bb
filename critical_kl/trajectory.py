"""The `Trajectory` pytree: a batch of RL episodes laid out on one token buffer.

Every per-token array is indexed by the *buffer position of the token it is about*: entry
`[b, t]` concerns token `tokens[b, t]`, predicted from the prefix `tokens[b, :t]`. Prompt and
padding positions have `mask == 0`; generated tokens (the actions) have `mask == 1` and are
contiguous, from `prompt_lengths[b]` to `prompt_lengths[b] + lengths[b] - 1`.

A model run teacher-forced over `tokens` returns, at position t, the distribution of token t + 1;
`align_to_tokens` shifts such an output by one so that it follows the convention above.
"""
import flax.struct
import jax.numpy as jnp

# Why an episode ended (SPEC §4), stored in `Trajectory.termination`.
END_OF_RESULT = 0  # `\n` emitted after `</scratch>\n` had been generated
PAD_EMITTED = 1  # the padding token (or another special token of the vocabulary) was emitted
MAX_LENGTH = 2  # the episode reached its maximum number of tokens


@flax.struct.dataclass
class Trajectory:
  """A batch of B episodes on a buffer of T tokens.

  Attributes:
    tokens: int32 [B, T], prompt, then generated tokens, then padding.
    mask: float32 [B, T], 1.0 on generated tokens.
    logp: float32 [B, T], log π_old(token | prefix) at the sampling temperature.
    values: float32 [B, T], V_old(prefix) for each generated token.
    entropy: float32 [B, T], entropy of π_old(· | prefix) at the sampling temperature.
    rewards: float32 [B, T], non-zero only on an episode's last token.
    prompt_lengths: int32 [B].
    lengths: int32 [B], number of generated tokens.
    termination: int32 [B], one of END_OF_RESULT, PAD_EMITTED, MAX_LENGTH.
    solved: bool [B], the result line equals the expected one.
    ref_logp: float32 [B, T], log π_ref(token | prefix) at the sampling temperature.
    certainty: float32 [B, T], certainty Ĵ of the reference model (see `certainty.certainty`).
    critical: bool [B, T], the token is a critical token (SPEC §6); all False if unknown.
  """
  tokens: jnp.ndarray
  mask: jnp.ndarray
  logp: jnp.ndarray
  values: jnp.ndarray
  entropy: jnp.ndarray
  rewards: jnp.ndarray
  prompt_lengths: jnp.ndarray
  lengths: jnp.ndarray
  termination: jnp.ndarray
  solved: jnp.ndarray
  ref_logp: jnp.ndarray
  certainty: jnp.ndarray
  critical: jnp.ndarray


def align_to_tokens(per_position: jnp.ndarray) -> jnp.ndarray:
  """Shifts a teacher-forced model output by one position along axis 1.

  Args:
    per_position: [B, T, ...], entry t computed from `tokens[:, :t + 1]` (it predicts token t + 1).

  Returns:
    [B, T, ...], entry t computed from `tokens[:, :t]` (it predicts token t); entry 0 is zero.
  """
  pad = jnp.zeros_like(per_position[:, :1])
  return jnp.concatenate([pad, per_position[:, :-1]], axis=1)
