"""Generalized advantage estimation (SPEC §5) on the `Trajectory` token buffer."""
import chex
import jax
import jax.numpy as jnp


def gae(rewards: chex.Array, values: chex.Array, mask: chex.Array, gamma: chex.Numeric,
        lam: chex.Numeric) -> tuple[jnp.ndarray, jnp.ndarray]:
  """GAE(γ, λ) advantages and returns, bootstrapping 0 after each episode's last token.

  δ_t = r_t + γ·V_{t+1}·m_{t+1} − V_t and A_t = δ_t + γλ·m_{t+1}·A_{t+1}: the mask of the next
  position ends the recursion at the last generated token, wherever a row's episode starts.

  Args:
    rewards: [B, T].
    values: [B, T], V_old of each token's prefix.
    mask: [B, T], 1 on generated tokens, contiguous within each row.
    gamma: discount γ (may be traced).
    lam: λ (may be traced).

  Returns:
    advantages: [B, T], A_t, 0 where `mask` is 0.
    returns: [B, T], A_t + V_t, 0 where `mask` is 0.
    Neither is differentiated.
  """
  chex.assert_rank(rewards, 2)
  chex.assert_equal_shape([rewards, values, mask])
  rewards, values, mask = jax.lax.stop_gradient((rewards, values, mask))
  next_mask = jnp.pad(mask[:, 1:], ((0, 0), (0, 1)))
  next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1))) * next_mask
  deltas = rewards + gamma * next_values - values

  def step(next_advantage, inputs):
    delta, continues = inputs
    advantage = delta + gamma * lam * continues * next_advantage
    return advantage, advantage

  # Scan over time (the leading axis after transposing), from the last position back.
  _, advantages = jax.lax.scan(step, jnp.zeros_like(deltas[:, 0]), (deltas.T, next_mask.T),
                               reverse=True)
  advantages = advantages.T * mask
  return advantages, (advantages + values) * mask


def normalize(advantages: chex.Array, mask: chex.Array, eps: float = 1e-8) -> jnp.ndarray:
  """Advantages [B, T] whitened over the generated tokens of the whole batch (0 elsewhere).

  Subtracting the batch mean is a baseline that needs no trained value head: with γ = λ = 1 a
  random value head leaves A_t ≈ ±1 on every token, and the mostly failed episodes would push
  down the (mostly right) tokens they sampled. Not in the paper's loss (SPEC §5); an option.
  """
  chex.assert_equal_shape([advantages, mask])
  count = jnp.maximum(jnp.sum(mask), 1.0)
  mean = jnp.sum(advantages * mask) / count
  var = jnp.sum(jnp.square(advantages - mean) * mask) / count
  return (advantages - mean) / jnp.sqrt(var + eps) * mask
