"""Tests of `critical_kl.certainty`: the reference's certainty Ĵ, of one model or an ensemble."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critical_kl import certainty as certainty_lib
from critical_kl import losses
from conftest import np_log_softmax  # tests/ is on sys.path under pytest

LOG2, LOG3 = math.log(2.0), math.log(3.0)


# p = (½, ¼, ¼) at temperature 4: H(p) = 1.5·log 2, max p = ½.
THREE_TOKEN_LOGITS = 4.0 * np.log(np.array([0.5, 0.25, 0.25]))


@pytest.mark.parametrize("method, expected", [
    ("negentropy", 1.0 - 1.5 * LOG2 / LOG3),
    ("negentropy_max_prob", 1.0 + math.log(0.5) / LOG3),
    ("max_prob", 0.5),
])
def test_certainty_hand_computed(method, expected):
  np.testing.assert_allclose(certainty_lib.certainty(THREE_TOKEN_LOGITS, method, temperature=4.0),
                             expected, rtol=1e-5)


@pytest.mark.parametrize("method, uniform", [
    ("negentropy", 0.0), ("negentropy_max_prob", 0.0), ("max_prob", 1.0 / 7)])
def test_certainty_extremes(method, uniform):
  logits = np.stack([np.full(7, 3.0), np.array([200.0, 0, 0, 0, 0, 0, 0])])
  c = certainty_lib.certainty(logits, method, temperature=4.0)
  np.testing.assert_allclose(c, [uniform, 1.0], atol=1e-6)
  assert np.all((np.asarray(c) >= 0) & (np.asarray(c) <= 1))


def test_certainty_is_not_differentiated_and_checks_arguments():
  grad = jax.grad(lambda x: jnp.sum(certainty_lib.certainty(x, "negentropy")))(THREE_TOKEN_LOGITS)
  np.testing.assert_array_equal(grad, 0.0)
  with pytest.raises(ValueError, match="negentropy_max_prob"):
    certainty_lib.certainty(THREE_TOKEN_LOGITS, "entropy")
  with pytest.raises(ValueError, match="temperature"):
    certainty_lib.certainty(THREE_TOKEN_LOGITS, temperature=0.0)


# Two members on three tokens at τ = 4: p₁ = (½, ¼, ¼), p₂ = (¼, ½, ¼), mixture (⅜, ⅜, ¼).
TWO_MEMBERS = 4.0 * np.log(np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]))
MIXTURE_ENTROPY = -2 * 0.375 * math.log(0.375) - 0.25 * math.log(0.25)
TWO_MEMBERS_INFORMATION = (MIXTURE_ENTROPY - 1.5 * LOG2) / LOG3  # Each member has H = 1.5·log 2.


@pytest.mark.parametrize("method, expected", [
    ("negentropy", 1.0 - MIXTURE_ENTROPY / LOG3),
    ("negentropy_max_prob", 1.0 + math.log(0.375) / LOG3),
    ("max_prob", 0.375),
])
def test_ensemble_certainty_hand_computed(method, expected):
  np.testing.assert_allclose(certainty_lib.ensemble_certainty(TWO_MEMBERS, method, temperature=4.0),
                             expected, rtol=1e-5)
  np.testing.assert_allclose(
      certainty_lib.ensemble_certainty(TWO_MEMBERS, method, temperature=4.0, epistemic=True),
      max(expected - TWO_MEMBERS_INFORMATION, 0.0), rtol=1e-5, atol=1e-7)


def test_ensemble_mutual_information_hand_computed():
  np.testing.assert_allclose(
      certainty_lib.ensemble_mutual_information(TWO_MEMBERS, temperature=4.0),
      TWO_MEMBERS_INFORMATION, rtol=1e-5)
  identical = np.stack([TWO_MEMBERS[0]] * 3)
  np.testing.assert_allclose(certainty_lib.ensemble_mutual_information(identical), 0.0, atol=1e-6)


@pytest.mark.parametrize("method", certainty_lib.CERTAINTY_METHODS)
@pytest.mark.parametrize("epistemic", [False, True])
def test_ensemble_of_one_or_of_copies_is_one_model(method, epistemic):
  logits = np.random.default_rng(2).normal(size=(2, 3, 7)) * 3
  single = certainty_lib.certainty(logits, method, temperature=4.0)
  for members in (logits[None], np.stack([logits] * 4)):
    np.testing.assert_allclose(
        certainty_lib.ensemble_certainty(members, method, temperature=4.0, epistemic=epistemic),
        single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", certainty_lib.CERTAINTY_METHODS)
def test_ensemble_certainty_range_and_disagreement(method):
  members = np.random.default_rng(3).normal(size=(5, 4, 6, 11)) * 4
  plain = np.asarray(certainty_lib.ensemble_certainty(members, method))
  strict = np.asarray(certainty_lib.ensemble_certainty(members, method, epistemic=True))
  information = np.asarray(certainty_lib.ensemble_mutual_information(members))
  for x in (plain, strict, information):
    assert np.all((x >= 0) & (x <= 1))
  assert np.all(information > 1e-3)  # Random members disagree...
  assert np.all(strict < plain)  # ...which the epistemic term penalises once more.
  grad = jax.grad(
      lambda m: jnp.sum(certainty_lib.ensemble_certainty(m, method, epistemic=True)))(members)
  np.testing.assert_array_equal(grad, 0.0)
  with pytest.raises(ValueError, match="K, ..., V"):
    certainty_lib.ensemble_certainty(members[0, 0, 0])


def test_ensemble_logits_are_the_mixture_at_their_temperature():
  members = np.random.default_rng(4).normal(size=(3, 2, 5, 7)) * 2
  for temperature in (1.0, 2.0):
    mixture = np.mean(np.exp(np_log_softmax(members, temperature)), axis=0)
    ref_logits = certainty_lib.ensemble_logits(members, temperature)
    np.testing.assert_allclose(jax.nn.softmax(ref_logits / temperature), mixture, rtol=1e-5)
    # As reference logits: the KL to the mixture, and the mixture's probability of a token.
    logits = members[0] + 1.0
    expected = np.sum(np.exp(np_log_softmax(logits, temperature))
                      * (np_log_softmax(logits, temperature) - np.log(mixture)), axis=-1)
    np.testing.assert_allclose(losses.exact_kl(logits, ref_logits, temperature), expected,
                               rtol=1e-4, atol=1e-6)
    tokens = np.zeros((2, 5), np.int32)
    ref_logp, _ = losses.token_logp_and_entropy(ref_logits, tokens, temperature)
    np.testing.assert_allclose(ref_logp, np.log(mixture[..., 0]), rtol=1e-5)
    np.testing.assert_allclose(certainty_lib.ensemble_certainty(members, "max_prob", temperature),
                               mixture.max(-1), rtol=1e-5)
