"""Tests of `critical_kl.advantages`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critical_kl import advantages


def gae_reference(rewards, values, mask, gamma, lam):
  """Plain-Python GAE, episode by episode: the definition the scanned version must match."""
  batch, length = rewards.shape
  adv = np.zeros((batch, length))
  for b in range(batch):
    steps = [t for t in range(length) if mask[b, t]]
    next_value, next_adv = 0.0, 0.0  # Nothing follows an episode's last token.
    for t in reversed(steps):
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      adv[b, t] = delta + gamma * lam * next_adv
      next_value, next_adv = values[b, t], adv[b, t]
  return adv, (adv + values) * mask


def random_batch(seed):
  """Rows whose episodes start at different columns and have different lengths."""
  rng = np.random.default_rng(seed)
  batch, length = 6, 12
  starts = np.array([0, 3, 5, 2, 7, 11])
  lengths = np.array([12, 4, 7, 1, 5, 1])
  columns = np.arange(length)
  mask = ((columns >= starts[:, None]) & (columns < (starts + lengths)[:, None]))
  rewards = rng.normal(size=(batch, length)) * mask
  values = rng.normal(size=(batch, length))
  return rewards, values, mask.astype(np.float64)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_reference(gamma, lam):
  rewards, values, mask = random_batch(seed=0)
  expected_adv, expected_ret = gae_reference(rewards, values, mask, gamma, lam)
  adv, ret = advantages.gae(*(jnp.float32(x) for x in (rewards, values, mask)), gamma, lam)
  np.testing.assert_allclose(adv, expected_adv, atol=1e-5)
  np.testing.assert_allclose(ret, expected_ret, atol=1e-5)
  np.testing.assert_allclose(ret, (adv + values) * mask, atol=1e-5)
  assert np.all(np.asarray(adv)[mask == 0] == 0)


def test_gae_terminal_reward_with_zero_values_is_the_return():
  # γ = 1, λ = 1, V = 0: every token's advantage is the episode's final reward.
  mask = jnp.array([[0, 0, 1, 1, 1, 0]], jnp.float32)
  rewards = jnp.array([[0, 0, 0, 0, 2.0, 0]])
  adv, ret = advantages.gae(rewards, jnp.zeros_like(rewards), mask, 1.0, 1.0)
  np.testing.assert_allclose(adv, [[0, 0, 2, 2, 2, 0]])
  np.testing.assert_allclose(ret, adv)


def test_gae_is_jittable_and_vmaps_over_lambda():
  rewards, values, mask = (jnp.float32(x) for x in random_batch(seed=1))
  lams = jnp.array([0.0, 0.5, 0.95])
  adv, _ = jax.jit(jax.vmap(lambda lam: advantages.gae(rewards, values, mask, 1.0, lam)))(lams)
  for adv_lam, lam in zip(adv, lams):
    expected, _ = gae_reference(*(np.asarray(x) for x in (rewards, values, mask)), 1.0, float(lam))
    np.testing.assert_allclose(adv_lam, expected, atol=1e-5)


def test_gae_is_not_differentiated():
  rewards, values, mask = (jnp.float32(x) for x in random_batch(seed=2))
  grad = jax.grad(lambda v: jnp.sum(advantages.gae(rewards, v, mask, 1.0, 0.95)[0]))(values)
  np.testing.assert_array_equal(grad, 0.0)


def test_normalize_whitens_generated_tokens_only():
  adv = jnp.array([[0.0, 1.0, 3.0, 9.0], [5.0, 2.0, 0.0, 0.0]])
  mask = jnp.array([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
  out = np.asarray(advantages.normalize(adv, mask))
  valid = np.array([1.0, 3.0, 5.0, 2.0])
  expected = (valid - valid.mean()) / valid.std()
  np.testing.assert_allclose(out[mask > 0], expected, rtol=1e-5)
  np.testing.assert_array_equal(out[mask == 0], 0.0)
