"""Tests of `critical_kl.token_weights`: prioritized, entropy, oracle and top-entropy weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critical_kl import token_weights


def test_prioritized_weights():
  c = np.array([0.0, 0.5, 1.0])
  np.testing.assert_allclose(token_weights.prioritized_weights(c, 2.0), [0.0, 0.25, 1.0])
  # (1 − b)·Ĵ^β + b with b = −½.
  np.testing.assert_allclose(token_weights.prioritized_weights(c, 2.0, intercept=-0.5),
                             [-0.5, 1.5 * 0.25 - 0.5, 1.0])
  # β = 0 is the standard KL penalty, including at Ĵ = 0 (0**0 = 1).
  np.testing.assert_array_equal(token_weights.prioritized_weights(c, 0.0), np.ones(3))
  with pytest.raises(ValueError, match="beta"):
    token_weights.prioritized_weights(c, -1.0)
  with pytest.raises(ValueError, match="intercept"):
    token_weights.prioritized_weights(c, 1.0, intercept=0.1)
  # A traced β cannot be checked, but must work.
  vmapped = jax.vmap(lambda b: token_weights.prioritized_weights(c, b))(jnp.array([0.0, 2.0]))
  np.testing.assert_allclose(vmapped, [[1.0, 1.0, 1.0], [0.0, 0.25, 1.0]])


def test_entropy_weights():
  entropy = np.array([0.0, 1.0, 3.0])
  np.testing.assert_allclose(token_weights.entropy_weights(entropy, 2.0), [1.0, 1 / 4, 1 / 16])
  np.testing.assert_array_equal(token_weights.entropy_weights(entropy, 0.0), np.ones(3))
  swept = jax.jit(jax.vmap(lambda c: token_weights.entropy_weights(entropy, c)))(
      jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(swept, [[1.0, 1.0, 1.0], [1.0, 1 / 2, 1 / 4]])
  grad = jax.grad(lambda h: jnp.sum(token_weights.entropy_weights(h, 1.0)))(jnp.asarray(entropy))
  np.testing.assert_array_equal(grad, 0.0)
  with pytest.raises(ValueError, match="exponent"):
    token_weights.entropy_weights(entropy, -1.0)


# Valid entropies 1, 2, 3, 6, 7, 8; the padded ones (5, 9, 4, 0.5) are never kept.
TOP_ENTROPY = np.array([[5.0, 1.0, 2.0, 3.0, 9.0], [4.0, 0.5, 6.0, 7.0, 8.0]])
TOP_MASK = np.array([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], np.float32)


@pytest.mark.parametrize("share, kept", [
    (1.0, [1, 2, 3, 6, 7, 8]),
    (0.5, [6, 7, 8]),  # The ½-quantile is 4.5.
    (1 / 3, [7, 8]),  # The ⅔-quantile is 6 + ⅓.
    (0.1, [8]),
])
def test_top_entropy_mask_hand_computed(share, kept):
  expected = np.isin(TOP_ENTROPY, kept) & (TOP_MASK > 0)
  np.testing.assert_array_equal(token_weights.top_entropy_mask(TOP_ENTROPY, TOP_MASK, share),
                                expected)


def test_top_entropy_mask_vmaps_over_the_share_and_checks_it():
  shares = jnp.array([1.0, 0.5, 1 / 3])
  swept = jax.jit(jax.vmap(lambda r: token_weights.top_entropy_mask(TOP_ENTROPY, TOP_MASK, r)))(
      shares)
  np.testing.assert_array_equal(swept.sum(axis=(1, 2)), [6, 3, 2])
  np.testing.assert_array_equal(
      token_weights.top_entropy_mask(TOP_ENTROPY, np.zeros((2, 5)), 0.5), 0)
  for bad in (0.0, 1.5):
    with pytest.raises(ValueError, match="top_share"):
      token_weights.top_entropy_mask(TOP_ENTROPY, TOP_MASK, bad)


def test_critical_mask_weights_and_correct_prefix():
  tokens = np.array([[7, 1, 2, 3, 4, 0], [7, 1, 5, 3, 4, 4]])
  target = np.array([[9, 1, 2, 3, 4, 6], [9, 1, 2, 3, 4, 6]])
  mask = np.array([[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
  prefix = token_weights.correct_prefix(tokens, target, mask)
  # The second episode goes wrong at position 2: that token still has a correct prefix.
  np.testing.assert_array_equal(prefix, [[0, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
  critical = np.array([[0, 0, 1, 0, 1, 0], [0, 0, 1, 0, 1, 0]], bool)
  np.testing.assert_array_equal(token_weights.critical_mask_weights(critical),
                                [[1, 1, 0, 1, 0, 1], [1, 1, 0, 1, 0, 1]])
  np.testing.assert_array_equal(token_weights.critical_mask_weights(critical, prefix),
                                [[1, 1, 0, 1, 0, 1], [1, 1, 0, 1, 1, 1]])
