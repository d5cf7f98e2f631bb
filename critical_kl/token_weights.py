"""Token weights: where the KL penalty (or the policy gradient) acts, token by token.

- `prioritized_weights`: the paper's w = (1 − b)·Ĵ^β + b from the reference's certainty Ĵ
  (`certainty`): small where the reference is uncertain, so the policy may explore there;
- `entropy_weights`: (1 + H_ref)^−c, a variant on the reference's entropy;
- `critical_mask_weights` (with `correct_prefix`): the oracle that frees exactly the critical
  tokens of the correct completion (SPEC §6);
- `top_entropy_mask`: the policy-gradient weights that keep the tokens of highest entropy.

All are per-token arrays in the `Trajectory` convention (entry [b, t] is about token
`tokens[b, t]`); their hyper-parameters (β, b, c, ρ) may be traced, so that a sweep vmaps, and are
checked only when concrete.
"""
import chex
import jax
import jax.numpy as jnp

from critical_kl import softmax


def prioritized_weights(certainty: chex.Array,
                        beta: chex.Numeric,
                        intercept: chex.Numeric = 0.0) -> jnp.ndarray:
  """KL weights of the prioritized penalty, w = (1 − b)·Ĵ^β + b.

  Uncertain reference predictions (small Ĵ, e.g. critical tokens) get small weights, so the
  policy may explore there; β = 0 gives ones (jnp.power(0, 0) = 1), i.e. the standard KL penalty.
  `beta` and `intercept` may be traced, e.g. vmapped over a β ablation; they are only checked
  when concrete.

  Args:
    certainty: [...], Ĵ ∈ [0, 1].
    beta: β ≥ 0, scalar or broadcastable to `certainty`.
    intercept: b ≤ 0, the weight floor at Ĵ = 0.

  Returns:
    [...], the weights.
  """
  softmax.check_concrete(beta, lambda b: b >= 0, "beta must be >= 0")
  softmax.check_concrete(intercept, lambda b: b <= 0, "intercept must be <= 0")
  return (1.0 - intercept) * jnp.power(jnp.asarray(certainty), beta) + intercept


def entropy_weights(entropy: chex.Array, exponent: chex.Numeric) -> jnp.ndarray:
  """Token weights w = (1 + H)^−c from the reference's Shannon entropy H (in nats).

  Like Ĵ^β, small where the reference is uncertain, without the normalisation by log|V|; a
  variant the authors' code carries commented out. c = 0 gives ones. `exponent` may be traced.

  Args:
    entropy: [...], H ≥ 0, e.g. `losses.token_logp_and_entropy(ref_logits, tokens, τ)[1]`.
    exponent: c ≥ 0, scalar or broadcastable to `entropy`.

  Returns:
    [...], the weights in (0, 1], not differentiated.
  """
  softmax.check_concrete(exponent, lambda c: c >= 0, "exponent must be >= 0")
  return jax.lax.stop_gradient(jnp.power(1.0 + jnp.asarray(entropy), -exponent))


def top_entropy_mask(entropy: chex.Array, mask: chex.Array,
                     top_share: chex.Numeric) -> jnp.ndarray:
  """1 on the valid tokens of highest entropy (a share ρ of them), 0 elsewhere.

  The "high-entropy minority tokens" rule for the policy-gradient weights: the threshold is the
  (1 − ρ)-quantile of the entropies of the valid tokens of the whole batch (linear interpolation,
  as `numpy.quantile`), and a valid token is kept if its entropy reaches it; ρ = 1 keeps every
  valid token. `top_share` may be traced, so a ρ sweep can be vmapped.

  Args:
    entropy: [...], the policy's entropy, e.g. `Trajectory.entropy` (π_old when sampling).
    mask: [...], same shape, 1 on valid tokens.
    top_share: ρ ∈ (0, 1].

  Returns:
    [...], float 0/1, not differentiated.
  """
  softmax.check_concrete(top_share, lambda r: (r > 0) & (r <= 1), "top_share must be in (0, 1]")
  entropy, valid = jnp.asarray(entropy), jnp.asarray(mask) > 0
  chex.assert_equal_shape([entropy, valid])
  threshold = jnp.nanquantile(jnp.where(valid, entropy, jnp.nan), 1.0 - top_share)
  keep = valid & (entropy >= threshold)
  return jax.lax.stop_gradient(keep.astype(entropy.dtype))


def correct_prefix(tokens: chex.Array, target_tokens: chex.Array,
                   mask: chex.Array) -> jnp.ndarray:
  """Whether every generated token before position t equals the correct completion's.

  Args:
    tokens: int [B, T], the episodes (`Trajectory.tokens`).
    target_tokens: int [B, T], the correct completions on the same buffer (prompt positions are
      not compared).
    mask: [B, T], 1 on generated tokens.

  Returns:
    bool [B, T], True at the generated tokens whose prefix is correct (the token itself may be
    wrong), False where `mask` is 0.
  """
  chex.assert_equal_shape([tokens, target_tokens, mask])
  generated = jnp.asarray(mask) > 0
  wrong = (jnp.asarray(tokens) != jnp.asarray(target_tokens)) & generated
  wrong_before = jnp.cumsum(wrong, axis=1) - wrong
  return generated & (wrong_before == 0)


def critical_mask_weights(critical: chex.Array,
                          prefix_correct: chex.Array | None = None) -> jnp.ndarray:
  """Fixed token weights, 0 on critical positions and 1 elsewhere: the oracle of the mechanism.

  Used as KL weights, it frees exactly the critical tokens (SPEC §6) instead of the reference's
  uncertain ones. The critical positions are those of the correct completion, so a deviating
  episode may hold another token there; `prefix_correct` frees a position only while the
  episode's prefix is still the correct one.

  Args:
    critical: bool [...], the critical positions (e.g. `Trajectory.critical`).
    prefix_correct: optional bool [...], same shape, e.g. from `correct_prefix`.

  Returns:
    float32 [...].
  """
  freed = jnp.asarray(critical, bool)
  if prefix_correct is not None:
    chex.assert_equal_shape([freed, prefix_correct])
    freed = freed & jnp.asarray(prefix_correct, bool)
  return 1.0 - freed.astype(jnp.float32)
