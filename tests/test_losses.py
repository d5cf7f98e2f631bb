"""Tests of `critical_kl.losses`."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critical_kl import advantages
from critical_kl import certainty as certainty_lib
from critical_kl import losses
from critical_kl import token_weights
from critical_kl.trajectory import MAX_LENGTH, Trajectory
from conftest import np_log_softmax  # tests/ is on sys.path under pytest

LOG2 = math.log(2.0)


def true_kl(logits, ref_logits, temperature=1.0):
  """KL(softmax(logits / τ)‖softmax(ref_logits / τ)) over the last axis, without `losses`."""
  p, r = jax.nn.softmax(logits / temperature), jax.nn.softmax(ref_logits / temperature)
  return jnp.sum(p * (jnp.log(p) - jnp.log(r)), axis=-1)


# ------------------------------------------------------ estimators, exact KL, log-probabilities


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
                             rtol=1e-5)


def test_kl_estimate_default_is_k2_and_unknown_raises():
  np.testing.assert_allclose(losses.kl_estimate(np.array([1.0]), np.array([0.0])), [0.5])
  with pytest.raises(ValueError, match="k1, k2, k3"):
    losses.kl_estimate(np.array([1.0]), np.array([0.0]), "k4")


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


def test_certainty_and_token_weights_stay_importable_from_losses():
  """The public API's aliases are the functions of their new homes, not copies."""
  for name in ("CERTAINTY_METHODS", "certainty", "ensemble_certainty", "ensemble_logits",
               "ensemble_mutual_information"):
    assert getattr(losses, name) is getattr(certainty_lib, name)
  for name in ("prioritized_weights", "entropy_weights", "top_entropy_mask",
               "critical_mask_weights", "correct_prefix"):
    assert getattr(losses, name) is getattr(token_weights, name)


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
       is −E_a~π_ref[∇log π_θ(a)] = ∇KL(π_ref‖π_θ), the reverse KL, not ∇KL(π_θ‖π_ref);
  (v) the exact KL in the loss ("exact"): ∇KL itself, with no sampling error, for any a.
  """
  grad_kl = jax.grad(lambda theta: true_kl(theta, REF))(THETA)
  grad_reverse_kl = jax.grad(lambda theta: true_kl(REF, theta))(THETA)
  assert np.linalg.norm(grad_kl - grad_reverse_kl) > 10 * MC_ATOL  # They are distinguishable.
  # ∂KL/∂θ_j = π_j·(ρ_j − KL) at τ = 1, by hand.
  p, rho = jax.nn.softmax(THETA), jax.nn.log_softmax(THETA) - jax.nn.log_softmax(REF)
  np.testing.assert_allclose(grad_kl, p * (rho - jnp.sum(p * rho)), atol=1e-6)

  exact = sampled_gradient(lambda theta: jnp.full(ACTIONS.shape, losses.exact_kl(theta, REF, 1.0)))
  np.testing.assert_allclose(exact, grad_kl, atol=1e-6)

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
      ref_logp=ref_logp, certainty=certainty_lib.certainty(ref_logits),
      critical=jnp.asarray(CRITICAL))
  return logits, f32(B, T), ref_logits, traj, f32(B, T), f32(B, T)


def test_a2c_loss_matches_hand_assembled_value():
  cfg = losses.LossConfig()
  logits, values, ref_logits, traj, adv, ret = make_batch()
  weights = token_weights.prioritized_weights(traj.certainty, 2.0)
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
  np.testing.assert_allclose(metrics["certainty_critical"], traj.certainty[0, 2], rtol=1e-5)
  np.testing.assert_allclose(metrics["weight_mean"], mean(weights), rtol=1e-5)
  log_r = np_log_softmax(ref_logits, cfg.temperature)
  np.testing.assert_allclose(metrics["kl_exact"],
                             mean(np.sum(np.exp(log_probs) * (log_probs - log_r), -1)), rtol=1e-5)


def test_kl_gradient_flows_through_the_policy_log_prob():
  """Gradient of the k2 term is α·w·ρ·∇log π_θ(a) / n, with ∇_logits log π = (onehot − π)/τ."""
  cfg = losses.LossConfig(value_coef=0.0, entropy_coef=0.0)
  logits, values, ref_logits, traj, adv, ret = make_batch()
  weights = token_weights.prioritized_weights(traj.certainty, 2.0)
  grad = jax.grad(lambda x: losses.a2c_loss(x, values, ref_logits, traj, jnp.zeros_like(adv),
                                            ret, weights, cfg)[0])(logits)
  log_probs = np_log_softmax(logits, cfg.temperature)
  logp = np.take_along_axis(log_probs, np.asarray(traj.tokens)[..., None], -1)[..., 0]
  grad_logp = (np.eye(V)[np.asarray(traj.tokens)] - np.exp(log_probs)) / cfg.temperature
  coef = 5.0 * weights * (logp - traj.ref_logp) * MASK / MASK.sum()
  np.testing.assert_allclose(grad, coef[..., None] * grad_logp, atol=1e-6)


@pytest.mark.parametrize("estimator", ["k3", "exact"])
@pytest.mark.parametrize("loss_fn", [losses.a2c_loss, losses.ppo_loss])
def test_masked_positions_change_nothing(loss_fn, estimator):
  cfg = losses.LossConfig(estimator=estimator)
  logits, values, ref_logits, traj, adv, ret = make_batch()
  weights = jnp.ones((B, T))
  off = MASK == 0
  pg_weights = jnp.where(off, 0.5, jnp.ones((B, T)))
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
      lambda lg, v, r, tr, a, rt, u=None: loss_fn(lg, v, r, tr, a, rt, weights, cfg, u),
      argnums=(0, 1), has_aux=True)
  (loss, metrics), grads = value_and_grad(logits, values, ref_logits, traj, adv, ret)
  (loss2, metrics2), grads2 = value_and_grad(*perturbed, pg_weights)
  np.testing.assert_allclose(loss2, loss, rtol=1e-5)
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
                           (ones, cfg.replace(kl_placement="reward")),
                           (ones, cfg.replace(kl_placement="advantage"))]:
    np.testing.assert_allclose(losses.a2c_loss(*args, weights, variant)[0], without_kl, rtol=1e-5)


@pytest.mark.parametrize("loss_fn", [losses.a2c_loss, losses.ppo_loss])
def test_default_policy_gradient_weights_are_ones_exactly(loss_fn):
  """The "loss" placement and pg_weights=None are the loss as it was: unweighted, KL in the loss."""
  logits, values, ref_logits, traj, adv, ret = make_batch()
  weights = token_weights.prioritized_weights(traj.certainty, 2.0)
  args = (values, ref_logits, traj, adv, ret, weights)
  value_and_grad = jax.value_and_grad(
      lambda x, cfg, u: loss_fn(x, *args, cfg, u), has_aux=True)
  (loss, metrics), grad = value_and_grad(logits, losses.LossConfig(), None)
  (loss1, metrics1), grad1 = value_and_grad(logits, losses.LossConfig(kl_placement="loss"),
                                            jnp.ones((B, T)))
  np.testing.assert_array_equal(loss1, loss)
  np.testing.assert_array_equal(grad1, grad)
  assert metrics1.keys() == metrics.keys()
  np.testing.assert_array_equal(metrics["pg_weight_mean"], 1.0)


@pytest.mark.parametrize("loss_fn", [losses.a2c_loss, losses.ppo_loss])
def test_policy_gradient_weights_scale_each_token(loss_fn):
  """With u on the actor term only, the gradient at token t is u_t times the unweighted one."""
  cfg = losses.LossConfig(value_coef=0.0, entropy_coef=0.0, use_kl=False)
  logits, values, ref_logits, traj, adv, ret = make_batch()
  # PPO at r = e^0.3 > 1 + ε: clipped where A > 0; the weights multiply either branch.
  traj = traj.replace(logp=losses.token_logp_and_entropy(logits, traj.tokens, 2.0)[0] - 0.3)
  u = jnp.asarray(np.random.default_rng(6).uniform(size=(B, T)), jnp.float32)
  value_and_grad = jax.value_and_grad(
      lambda x, w: loss_fn(x, values, ref_logits, traj, adv, ret, jnp.ones((B, T)), cfg, w),
      has_aux=True)
  (_, metrics), grad = value_and_grad(logits, None)
  (_, weighted), grad_u = value_and_grad(logits, u)
  np.testing.assert_allclose(grad_u, u[..., None] * grad, atol=1e-7)
  np.testing.assert_allclose(weighted["pg_weight_mean"], np.sum(u * MASK) / MASK.sum(), rtol=1e-5)
  if loss_fn is losses.a2c_loss:
    logp = losses.token_logp_and_entropy(logits, traj.tokens, cfg.temperature)[0]
    np.testing.assert_allclose(weighted["actor_loss"],
                               -np.sum(u * logp * adv * MASK) / MASK.sum(), rtol=1e-5)
  assert abs(weighted["actor_loss"] - metrics["actor_loss"]) > 1e-3


@pytest.mark.parametrize("loss_fn", [losses.a2c_loss, losses.ppo_loss])
def test_exact_penalty_gradient_is_the_true_kl_gradient(loss_fn):
  cfg = losses.LossConfig(estimator="exact", value_coef=0.0, entropy_coef=0.0)
  logits, values, ref_logits, traj, _, ret = make_batch()
  traj = traj.replace(logp=losses.token_logp_and_entropy(logits, traj.tokens, 2.0)[0])
  weights = token_weights.prioritized_weights(traj.certainty, 2.0)
  zeros = jnp.zeros((B, T))
  (_, metrics), grad = jax.value_and_grad(
      lambda x: loss_fn(x, values, ref_logits, traj, zeros, ret, weights, cfg),
      has_aux=True)(logits)
  expected = jax.grad(lambda x: 5.0 * jnp.sum(weights * MASK * true_kl(x, ref_logits, 2.0))
                      / MASK.sum())(logits)
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-9)
  assert np.abs(expected).max() > 1e-3
  np.testing.assert_allclose(metrics["kl_weighted"],
                             np.sum(weights * MASK * true_kl(logits, ref_logits, 2.0)) / MASK.sum(),
                             rtol=1e-5)


@pytest.mark.parametrize("placement, estimator", [
    ("loss", "k2"), ("loss", "exact"), ("reward", "k1"), ("advantage", "k1")])
def test_every_placement_follows_the_kl_gradient(placement, estimator):
  """∇ of the A2C loss on one-token episodes a ~ π_θ, penalty placed as chosen, ≈ α·∇KL(π_θ‖π_ref).

  "reward" and "advantage" carry the penalty through the advantages: with k1 they are the
  REINFORCE form (ii) of `test_estimator_gradients_against_exact_kl`; "advantage" adds a
  baseline of mean zero.
  """
  cfg = losses.LossConfig(estimator=estimator, kl_placement=placement, kl_coef=1.0,
                          value_coef=0.0, entropy_coef=0.0, temperature=1.0)
  n = ACTIONS.shape[0]
  tokens = ACTIONS[:, None].astype(jnp.int32)
  ones, zeros = jnp.ones((n, 1)), jnp.zeros((n, 1))
  as_logits = lambda theta: jnp.broadcast_to(theta, (n, 1, THETA.shape[0]))
  logp, entropy = losses.token_logp_and_entropy(as_logits(THETA), tokens, 1.0)
  ref_logp, _ = losses.token_logp_and_entropy(as_logits(REF), tokens, 1.0)
  traj = Trajectory(
      tokens=tokens, mask=ones, logp=logp, values=zeros, entropy=entropy, rewards=zeros,
      prompt_lengths=jnp.zeros(n, jnp.int32), lengths=jnp.ones(n, jnp.int32),
      termination=jnp.full(n, MAX_LENGTH), solved=jnp.zeros(n, bool), ref_logp=ref_logp,
      certainty=ones, critical=jnp.zeros((n, 1), bool))
  rewards = traj.rewards + losses.kl_reward_penalty(traj, ones, cfg)
  adv, ret = advantages.gae(rewards, traj.values, traj.mask, 1.0, 1.0)
  adv = adv + losses.kl_advantage_penalty(traj, ones, cfg)
  grad = jax.grad(lambda theta: losses.a2c_loss(as_logits(theta), zeros, as_logits(REF), traj,
                                                adv, ret, ones, cfg)[0])(THETA)
  grad_kl = jax.grad(lambda theta: true_kl(theta, REF))(THETA)
  np.testing.assert_allclose(grad, grad_kl, atol=2 * MC_ATOL)


def test_a2c_loss_jits_and_vmaps_over_beta():
  cfg = losses.LossConfig()
  logits, values, ref_logits, traj, adv, ret = make_batch()

  def loss_at(beta):
    weights = token_weights.prioritized_weights(traj.certainty, beta)
    return losses.a2c_loss(logits, values, ref_logits, traj, adv, ret, weights, cfg)[0]

  betas = jnp.array([0.0, 10.0, 150.0])
  swept = jax.jit(jax.vmap(loss_at))(betas)
  np.testing.assert_allclose(swept, [loss_at(float(b)) for b in betas], rtol=1e-5)
  standard = losses.a2c_loss(logits, values, ref_logits, traj, adv, ret, jnp.ones((B, T)), cfg)
  np.testing.assert_allclose(swept[0], standard[0], rtol=1e-5)
  jitted, _ = jax.jit(losses.a2c_loss)(logits, values, ref_logits, traj, adv, ret,
                                       jnp.ones((B, T)), cfg)
  np.testing.assert_allclose(jitted, standard[0], rtol=1e-5)


def test_ppo_at_ratio_one_has_the_a2c_gradient():
  cfg = losses.LossConfig()
  logits, values, ref_logits, traj, adv, ret = make_batch()
  traj = traj.replace(logp=losses.token_logp_and_entropy(logits, traj.tokens, cfg.temperature)[0])
  weights = token_weights.prioritized_weights(traj.certainty, 2.0)
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
  weights = token_weights.prioritized_weights(traj.certainty, 2.0)
  cfg = losses.LossConfig(kl_placement="reward", estimator="k1")
  rho = np.asarray(traj.logp - traj.ref_logp)
  np.testing.assert_allclose(losses.kl_reward_penalty(traj, weights, cfg),
                             -5.0 * weights * rho * MASK, rtol=1e-5, atol=1e-7)
  # Only one placement of the penalty is active at a time.
  for off in (cfg.replace(kl_placement="loss"), cfg.replace(kl_placement="advantage"),
              cfg.replace(use_kl=False)):
    np.testing.assert_array_equal(losses.kl_reward_penalty(traj, weights, off), 0.0)
  grad = jax.grad(lambda lp: jnp.sum(losses.kl_reward_penalty(traj.replace(logp=lp), weights,
                                                              cfg)))(traj.logp)
  np.testing.assert_array_equal(grad, 0.0)


def test_kl_advantage_penalty_hand_computed():
  _, _, _, traj, _, _ = make_batch()
  weights = token_weights.prioritized_weights(traj.certainty, 2.0)
  cfg = losses.LossConfig(kl_placement="advantage", estimator="k2")
  weighted = weights * 0.5 * np.asarray(traj.logp - traj.ref_logp)**2 * MASK
  mean = weighted.sum() / MASK.sum()
  shift = losses.kl_advantage_penalty(traj, weights, cfg)
  np.testing.assert_allclose(shift, 5.0 * (mean - weighted) * MASK, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.sum(shift), 0.0, atol=1e-5)  # Centred over the valid tokens.
  for off in (cfg.replace(kl_placement="loss"), cfg.replace(kl_placement="reward"),
              cfg.replace(use_kl=False)):
    np.testing.assert_array_equal(losses.kl_advantage_penalty(traj, weights, off), 0.0)
  grad = jax.grad(lambda lp: jnp.sum(losses.kl_advantage_penalty(traj.replace(logp=lp), weights,
                                                                 cfg)))(traj.logp)
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("estimator", losses.ESTIMATORS)
@pytest.mark.parametrize("placement", losses.KL_PLACEMENTS)
def test_padding_never_leaks_into_advantages_or_returns(placement, estimator):
  """Rewards, values, log-probabilities and weights of padded tokens, as the RL iteration
  combines them (reward penalty → GAE → advantage shift), change nothing on valid tokens."""
  cfg = losses.LossConfig(kl_placement=placement, estimator=estimator)
  _, _, _, traj, _, _ = make_batch()
  weights = token_weights.prioritized_weights(traj.certainty, 2.0)

  def placed(tr, w):
    rewards = tr.rewards + losses.kl_reward_penalty(tr, w, cfg)
    adv, ret = advantages.gae(rewards, tr.values, tr.mask, 1.0, 0.95)
    return adv + losses.kl_advantage_penalty(tr, w, cfg), ret

  off = MASK == 0
  perturbed = traj.replace(rewards=jnp.where(off, 9.0, traj.rewards),
                           values=jnp.where(off, -40.0, traj.values),
                           logp=jnp.where(off, 150.0, traj.logp),
                           ref_logp=jnp.where(off, -150.0, traj.ref_logp))
  adv, ret = placed(traj, weights)
  adv2, ret2 = placed(perturbed, jnp.where(off, 7.0, weights))
  for x, x2 in ((adv, adv2), (ret, ret2)):
    np.testing.assert_allclose(x2, x, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(x2)[off], 0.0)


@pytest.mark.parametrize("field, value, message", [
    ("estimator", "k5", "k1, k2, k3, exact"), ("kl_placement", "everywhere", "loss, reward"),
    ("temperature", 0.0, "temperature"), ("kl_coef", -1.0, "kl_coef"),
    ("value_coef", -0.1, "value_coef"), ("entropy_coef", -1e-3, "entropy_coef"),
    ("clip_eps", -0.2, "clip_eps")])
def test_validate_loss_config_rejects(field, value, message):
  losses.validate_loss_config(losses.LossConfig())
  with pytest.raises(ValueError, match=message):
    losses.validate_loss_config(losses.LossConfig(**{field: value}))


@pytest.mark.parametrize("placement", ["reward", "advantage"])
def test_exact_penalty_only_in_the_loss(placement):
  with pytest.raises(ValueError, match="exact"):
    losses.validate_loss_config(losses.LossConfig(estimator="exact", kl_placement=placement))
