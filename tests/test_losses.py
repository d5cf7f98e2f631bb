"""Tests of `critical_kl.losses`."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critical_kl import losses
from critical_kl.trajectory import MAX_LENGTH, Trajectory

LOG2, LOG3 = math.log(2.0), math.log(3.0)


def np_log_softmax(logits, temperature):
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------- estimators, certainty, weights


@pytest.mark.parametrize("estimator, rho, expected", [
    ("k1", LOG2, LOG2),
    ("k2", LOG2, 0.5 * LOG2**2),
    ("k3", LOG2, (0.5 - 1.0) + LOG2),
    ("k1", -LOG2, -LOG2),
    ("k2", -LOG2, 0.5 * LOG2**2),
    ("k3", -LOG2, (2.0 - 1.0) - LOG2),
])
def test_kl_estimate_hand_computed(estimator, rho, expected):
  # log π = log ½ and log π_ref = log ½ − ρ.
  logp = np.array([math.log(0.5)])
  np.testing.assert_allclose(losses.kl_estimate(logp, logp - rho, estimator), [expected],
                             rtol=1e-6)


def test_kl_estimate_default_is_k2_and_unknown_raises():
  np.testing.assert_allclose(losses.kl_estimate(np.array([1.0]), np.array([0.0])), [0.5])
  with pytest.raises(ValueError, match="k1, k2, k3"):
    losses.kl_estimate(np.array([1.0]), np.array([0.0]), "k4")


# p = (½, ¼, ¼) at temperature 4: H(p) = 1.5·log 2, max p = ½.
THREE_TOKEN_LOGITS = 4.0 * np.log(np.array([0.5, 0.25, 0.25]))


@pytest.mark.parametrize("method, expected", [
    ("negentropy", 1.0 - 1.5 * LOG2 / LOG3),
    ("negentropy_max_prob", 1.0 + math.log(0.5) / LOG3),
    ("max_prob", 0.5),
])
def test_certainty_hand_computed(method, expected):
  np.testing.assert_allclose(losses.certainty(THREE_TOKEN_LOGITS, method, temperature=4.0),
                             expected, rtol=1e-5)


@pytest.mark.parametrize("method, uniform", [
    ("negentropy", 0.0), ("negentropy_max_prob", 0.0), ("max_prob", 1.0 / 7)])
def test_certainty_extremes(method, uniform):
  logits = np.stack([np.full(7, 3.0), np.array([200.0, 0, 0, 0, 0, 0, 0])])
  c = losses.certainty(logits, method, temperature=4.0)
  np.testing.assert_allclose(c, [uniform, 1.0], atol=1e-6)
  assert np.all((np.asarray(c) >= 0) & (np.asarray(c) <= 1))


def test_certainty_is_not_differentiated_and_checks_arguments():
  grad = jax.grad(lambda x: jnp.sum(losses.certainty(x, "negentropy")))(THREE_TOKEN_LOGITS)
  np.testing.assert_array_equal(grad, 0.0)
  with pytest.raises(ValueError, match="negentropy_max_prob"):
    losses.certainty(THREE_TOKEN_LOGITS, "entropy")
  with pytest.raises(ValueError, match="temperature"):
    losses.certainty(THREE_TOKEN_LOGITS, temperature=0.0)


def test_prioritized_weights():
  c = np.array([0.0, 0.5, 1.0])
  np.testing.assert_allclose(losses.prioritized_weights(c, 2.0), [0.0, 0.25, 1.0])
  # (1 − b)·Ĵ^β + b with b = −½.
  np.testing.assert_allclose(losses.prioritized_weights(c, 2.0, intercept=-0.5),
                             [-0.5, 1.5 * 0.25 - 0.5, 1.0])
  # β = 0 is the standard KL penalty, including at Ĵ = 0 (0**0 = 1).
  np.testing.assert_array_equal(losses.prioritized_weights(c, 0.0), np.ones(3))
  with pytest.raises(ValueError, match="beta"):
    losses.prioritized_weights(c, -1.0)
  with pytest.raises(ValueError, match="intercept"):
    losses.prioritized_weights(c, 1.0, intercept=0.1)
  # A traced β cannot be checked, but must work.
  vmapped = jax.vmap(lambda b: losses.prioritized_weights(c, b))(jnp.array([0.0, 2.0]))
  np.testing.assert_allclose(vmapped, [[1.0, 1.0, 1.0], [0.0, 0.25, 1.0]])


def test_exact_kl_matches_numpy():
  rng = np.random.default_rng(0)
  logits, ref_logits = rng.normal(size=(2, 3, 5, 11)) * 2
  log_p, log_r = np_log_softmax(logits, 2.0), np_log_softmax(ref_logits, 2.0)
  expected = np.sum(np.exp(log_p) * (log_p - log_r), axis=-1)
  np.testing.assert_allclose(losses.exact_kl(logits, ref_logits, 2.0), expected, rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_array_equal(losses.exact_kl(logits, logits, 2.0), 0.0)
  with pytest.raises(ValueError, match="temperature"):
    losses.exact_kl(logits, ref_logits, -1.0)


def test_token_logp_and_entropy_and_masked_mean():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 4))
  tokens = rng.integers(0, 4, size=(2, 3))
  logp, entropy = losses.token_logp_and_entropy(logits, tokens, 2.0)
  log_probs = np_log_softmax(logits, 2.0)
  np.testing.assert_allclose(logp, np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0],
                             rtol=1e-5)
  np.testing.assert_allclose(entropy, -np.sum(np.exp(log_probs) * log_probs, -1), rtol=1e-5)
  x = np.array([[1.0, 2.0, 3.0]])
  np.testing.assert_allclose(losses.masked_mean(x, np.array([[0.0, 1.0, 1.0]])), 2.5)
  np.testing.assert_allclose(losses.masked_mean(x, np.zeros((1, 3))), 0.0)


# ------------------------------------------------------------------ gradients of the estimators

THETA = jnp.array([1.5, 0.0, -1.0, 0.5])
REF = jnp.array([-1.0, 1.0, 0.5, -1.5])
ACTIONS = jax.random.categorical(jax.random.key(0), THETA, shape=(100_000,))
MC_ATOL = 0.015  # About five Monte Carlo standard errors at 100k samples.


def sampled_gradient(per_sample):
  """E_a~π_θ[∇_θ per_sample(θ, a)] over the fixed samples `ACTIONS` (θ has 4 entries)."""
  return jax.grad(lambda theta: jnp.mean(per_sample(theta)))(THETA)


def sampled_rho(theta):
  """ρ(a) = log π_θ(a) − log π_ref(a) for each sample a ~ π_θ; [N]."""
  return losses.kl_estimate(jax.nn.log_softmax(theta)[ACTIONS], jax.nn.log_softmax(REF)[ACTIONS],
                            "k1")


def test_estimator_gradients_against_exact_kl():
  """Which estimator, differentiated in the loss, gives the gradient of KL(π_θ‖π_ref).

  ∇KL(π_θ‖π_ref) = E_a~π_θ[ρ(a)·∇log π_θ(a)]. Hence, with a sampled from π_θ:
  (i) k2 = ½ρ² in the loss: ∇k2 = ρ·∇log π_θ(a), unbiased for ∇KL;
  (ii) k1 as a REINFORCE reward, stop_grad(ρ)·log π_θ(a): the same, unbiased;
  (iii) k1 differentiated naively in the loss: ∇ρ = ∇log π_θ(a), whose expectation is
       Σ_a ∇π_θ(a) = 0, so the penalty has no effect on average although ∇KL ≠ 0;
  (iv) k3 differentiated in the loss: ∇k3 = (1 − π_ref(a)/π_θ(a))·∇log π_θ(a), whose expectation
       is −E_a~π_ref[∇log π_θ(a)] = ∇KL(π_ref‖π_θ), the reverse KL, not ∇KL(π_θ‖π_ref).
  """
  grad_kl = jax.grad(lambda theta: losses.exact_kl(theta, REF, 1.0))(THETA)
  grad_reverse_kl = jax.grad(lambda theta: losses.exact_kl(REF, theta, 1.0))(THETA)
  assert np.linalg.norm(grad_kl - grad_reverse_kl) > 10 * MC_ATOL  # They are distinguishable.

  k2 = sampled_gradient(lambda theta: 0.5 * jnp.square(sampled_rho(theta)))
  np.testing.assert_allclose(k2, grad_kl, atol=MC_ATOL)

  reinforce = sampled_gradient(
      lambda theta: jax.lax.stop_gradient(sampled_rho(theta)) * jax.nn.log_softmax(theta)[ACTIONS])
  np.testing.assert_allclose(reinforce, grad_kl, atol=MC_ATOL)

  naive_k1 = sampled_gradient(sampled_rho)
  np.testing.assert_allclose(naive_k1, 0.0, atol=MC_ATOL)
  assert np.linalg.norm(naive_k1 - grad_kl) > 10 * MC_ATOL

  k3 = sampled_gradient(lambda theta: jnp.expm1(-sampled_rho(theta)) + sampled_rho(theta))
  np.testing.assert_allclose(k3, grad_reverse_kl, atol=MC_ATOL)
  assert np.linalg.norm(k3 - grad_kl) > 5 * MC_ATOL


# ------------------------------------------------------------------------------ A2C and PPO

B, T, V = 2, 5, 3
MASK = np.array([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], np.float32)
CRITICAL = np.array([[0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], bool)


def make_batch(seed=0, temperature=2.0):
  """A tiny batch: (logits, values, ref_logits, traj, advantages, returns)."""
  rng = np.random.default_rng(seed)
  f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  logits, ref_logits = f32(B, T, V), f32(B, T, V)
  tokens = jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32)
  ref_logp, _ = losses.token_logp_and_entropy(ref_logits, tokens, temperature)
  old_logp, old_entropy = losses.token_logp_and_entropy(f32(B, T, V), tokens, temperature)
  traj = Trajectory(
      tokens=tokens, mask=jnp.asarray(MASK), logp=old_logp, values=f32(B, T),
      entropy=old_entropy, rewards=f32(B, T) * MASK, prompt_lengths=jnp.array([1, 2]),
      lengths=jnp.array([3, 3]), termination=jnp.full(B, MAX_LENGTH), solved=jnp.zeros(B, bool),
      ref_logp=ref_logp, certainty=losses.certainty(ref_logits), critical=jnp.asarray(CRITICAL))
  return logits, f32(B, T), ref_logits, traj, f32(B, T), f32(B, T)


def test_a2c_loss_matches_hand_assembled_value():
  cfg = losses.LossConfig()
  logits, values, ref_logits, traj, adv, ret = make_batch()
  weights = losses.prioritized_weights(traj.certainty, 2.0)
  loss, metrics = losses.a2c_loss(logits, values, ref_logits, traj, adv, ret, weights, cfg)

  log_probs = np_log_softmax(logits, cfg.temperature)
  logp = np.take_along_axis(log_probs, np.asarray(traj.tokens)[..., None], -1)[..., 0]
  entropy = -np.sum(np.exp(log_probs) * log_probs, -1)
  rho = logp - np.asarray(traj.ref_logp)
  mean = lambda x, m=MASK: np.sum(x * m) / max(np.sum(m), 1)
  actor, value, ent = -mean(logp * adv), mean((ret - values)**2), mean(entropy)
  kl = mean(weights * 0.5 * rho**2)
  expected = actor + 0.1 * value - 0.0005 * ent + 5.0 * kl
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["actor_loss"], actor, rtol=1e-5)
  np.testing.assert_allclose(metrics["value_loss"], value, rtol=1e-5)
  np.testing.assert_allclose(metrics["entropy"], ent, rtol=1e-5)
  np.testing.assert_allclose(metrics["kl_k1"], mean(rho), rtol=1e-5)
  np.testing.assert_allclose(metrics["kl_k3"], mean(np.expm1(-rho) + rho), rtol=1e-5)
  np.testing.assert_allclose(metrics["kl_critical"], 0.5 * rho[0, 2]**2, rtol=1e-5)
  np.testing.assert_allclose(metrics["kl_other"], mean(0.5 * rho**2, MASK * ~CRITICAL), rtol=1e-5)
  np.testing.assert_allclose(metrics["certainty_critical"], traj.certainty[0, 2], rtol=1e-6)
  np.testing.assert_allclose(metrics["weight_mean"], mean(weights), rtol=1e-6)
  log_r = np_log_softmax(ref_logits, cfg.temperature)
  np.testing.assert_allclose(metrics["kl_exact"],
                             mean(np.sum(np.exp(log_probs) * (log_probs - log_r), -1)), rtol=1e-5)


def test_kl_gradient_flows_through_the_policy_log_prob():
  """Gradient of the k2 term is α·w·ρ·∇log π_θ(a) / n, with ∇_logits log π = (onehot − π)/τ."""
  cfg = losses.LossConfig(value_coef=0.0, entropy_coef=0.0)
  logits, values, ref_logits, traj, adv, ret = make_batch()
  weights = losses.prioritized_weights(traj.certainty, 2.0)
  grad = jax.grad(lambda x: losses.a2c_loss(x, values, ref_logits, traj, jnp.zeros_like(adv),
                                            ret, weights, cfg)[0])(logits)
  log_probs = np_log_softmax(logits, cfg.temperature)
  logp = np.take_along_axis(log_probs, np.asarray(traj.tokens)[..., None], -1)[..., 0]
  grad_logp = (np.eye(V)[np.asarray(traj.tokens)] - np.exp(log_probs)) / cfg.temperature
  coef = 5.0 * weights * (logp - traj.ref_logp) * MASK / MASK.sum()
  np.testing.assert_allclose(grad, coef[..., None] * grad_logp, atol=1e-6)


@pytest.mark.parametrize("loss_fn", [losses.a2c_loss, losses.ppo_loss])
def test_masked_positions_change_nothing(loss_fn):
  cfg = losses.LossConfig(estimator="k3")
  logits, values, ref_logits, traj, adv, ret = make_batch()
  weights = jnp.ones((B, T))
  off = MASK == 0
  rng = np.random.default_rng(5)
  # Extreme log-probabilities off the mask would overflow k3 and the PPO ratio if not guarded.
  perturbed = (
      jnp.where(off[..., None], rng.normal(size=(B, T, V)) * 50, logits),
      jnp.where(off, rng.normal(size=(B, T)) * 50, values),
      jnp.where(off[..., None], rng.normal(size=(B, T, V)) * 50, ref_logits),
      traj.replace(ref_logp=jnp.where(off, 150.0, traj.ref_logp),
                   logp=jnp.where(off, 150.0, traj.logp)),
      jnp.where(off, 7.0, adv),
      jnp.where(off, 7.0, ret),
  )
  value_and_grad = jax.value_and_grad(
      lambda lg, v, r, tr, a, rt: loss_fn(lg, v, r, tr, a, rt, weights, cfg), argnums=(0, 1),
      has_aux=True)
  (loss, metrics), grads = value_and_grad(logits, values, ref_logits, traj, adv, ret)
  (loss2, metrics2), grads2 = value_and_grad(*perturbed)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  for name in metrics:
    np.testing.assert_allclose(metrics2[name], metrics[name], rtol=1e-5, err_msg=name)
  for g, g2 in zip(grads, grads2):
    assert np.all(np.isfinite(g2))
    np.testing.assert_allclose(g2, g, atol=1e-7)


def test_kl_term_can_be_switched_off():
  logits, values, ref_logits, traj, adv, ret = make_batch()
  args = (logits, values, ref_logits, traj, adv, ret)
  ones, zeros = jnp.ones((B, T)), jnp.zeros((B, T))
  cfg = losses.LossConfig()
  with_kl = losses.a2c_loss(*args, ones, cfg)[0]
  without_kl = losses.a2c_loss(*args, ones, cfg.replace(kl_coef=0.0))[0]
  assert abs(with_kl - without_kl) > 1e-3
  for weights, variant in [(zeros, cfg), (ones, cfg.replace(use_kl=False)),
                           (ones, cfg.replace(kl_in_reward=True))]:
    np.testing.assert_allclose(losses.a2c_loss(*args, weights, variant)[0], without_kl, rtol=1e-6)


def test_a2c_loss_jits_and_vmaps_over_beta():
  cfg = losses.LossConfig()
  logits, values, ref_logits, traj, adv, ret = make_batch()

  def loss_at(beta):
    weights = losses.prioritized_weights(traj.certainty, beta)
    return losses.a2c_loss(logits, values, ref_logits, traj, adv, ret, weights, cfg)[0]

  betas = jnp.array([0.0, 10.0, 150.0])
  swept = jax.jit(jax.vmap(loss_at))(betas)
  np.testing.assert_allclose(swept, [loss_at(float(b)) for b in betas], rtol=1e-5)
  standard = losses.a2c_loss(logits, values, ref_logits, traj, adv, ret, jnp.ones((B, T)), cfg)
  np.testing.assert_allclose(swept[0], standard[0], rtol=1e-6)
  jitted, _ = jax.jit(losses.a2c_loss)(logits, values, ref_logits, traj, adv, ret,
                                       jnp.ones((B, T)), cfg)
  np.testing.assert_allclose(jitted, standard[0], rtol=1e-6)


def test_ppo_at_ratio_one_has_the_a2c_gradient():
  cfg = losses.LossConfig()
  logits, values, ref_logits, traj, adv, ret = make_batch()
  traj = traj.replace(logp=losses.token_logp_and_entropy(logits, traj.tokens, cfg.temperature)[0])
  weights = losses.prioritized_weights(traj.certainty, 2.0)
  grads = [
      jax.grad(lambda x, fn=fn: fn(x, values, ref_logits, traj, adv, ret, weights, cfg)[0])(logits)
      for fn in (losses.a2c_loss, losses.ppo_loss)
  ]
  np.testing.assert_allclose(grads[1], grads[0], atol=1e-6)
  metrics = losses.ppo_loss(logits, values, ref_logits, traj, adv, ret, weights, cfg)[1]
  np.testing.assert_allclose(metrics["clip_fraction"], 0.0)
  np.testing.assert_allclose(metrics["approx_kl"], 0.0, atol=1e-7)


def test_ppo_clipping():
  cfg = losses.LossConfig(value_coef=0.0, entropy_coef=0.0, use_kl=False, clip_eps=0.2)
  logits, values, ref_logits, traj, _, ret = make_batch()
  logp = losses.token_logp_and_entropy(logits, traj.tokens, cfg.temperature)[0]
  # r = e^0.5 ≈ 1.65 (clipped) on the first episode, e^0.1 ≈ 1.11 (not) on the second.
  shift = np.where(np.arange(B)[:, None] == 0, 0.5, 0.1) * np.ones((B, T))
  traj = traj.replace(logp=logp - shift)
  adv = jnp.ones((B, T))
  (_, metrics), grad = jax.value_and_grad(
      lambda x: losses.ppo_loss(x, values, ref_logits, traj, adv, ret, jnp.ones((B, T)), cfg),
      has_aux=True)(logits)
  np.testing.assert_allclose(metrics["clip_fraction"], 3 / 6)
  approx_kl = np.sum((np.expm1(shift) - shift) * MASK) / MASK.sum()
  np.testing.assert_allclose(metrics["approx_kl"], approx_kl, rtol=1e-5)
  # With A > 0 and r > 1 + ε the clipped branch is taken: no gradient.
  np.testing.assert_array_equal(grad[0], 0.0)
  assert np.all(np.abs(grad[1]).sum(-1)[MASK[1] > 0] > 1e-3)


def test_kl_reward_penalty():
  logits, values, ref_logits, traj, adv, ret = make_batch()
  weights = losses.prioritized_weights(traj.certainty, 2.0)
  cfg = losses.LossConfig(kl_in_reward=True, estimator="k1")
  rho = np.asarray(traj.logp - traj.ref_logp)
  np.testing.assert_allclose(losses.kl_reward_penalty(traj, weights, cfg),
                             -5.0 * weights * rho * MASK, rtol=1e-5, atol=1e-7)
  # Only one placement of the penalty is active at a time.
  for off in (cfg.replace(kl_in_reward=False), cfg.replace(use_kl=False)):
    np.testing.assert_array_equal(losses.kl_reward_penalty(traj, weights, off), 0.0)
  grad = jax.grad(lambda lp: jnp.sum(losses.kl_reward_penalty(traj.replace(logp=lp), weights,
                                                              cfg)))(traj.logp)
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("field, value", [
    ("estimator", "k5"), ("temperature", 0.0), ("kl_coef", -1.0), ("value_coef", -0.1),
    ("entropy_coef", -1e-3), ("clip_eps", -0.2)])
def test_validate_loss_config_rejects(field, value):
  losses.validate_loss_config(losses.LossConfig())
  with pytest.raises(ValueError, match=field if field != "estimator" else "k1, k2, k3"):
    losses.validate_loss_config(losses.LossConfig(**{field: value}))
