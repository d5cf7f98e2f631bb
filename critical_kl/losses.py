"""The KL-modulated policy-gradient loss of SPEC §5.

The pieces are separate pure functions so that a user can recombine them in their own loss:

- `kl_estimate`: the per-token estimators k1, k2, k3 of KL(π_θ‖π_ref) from sampled tokens;
- `exact_kl`: the KL over the whole vocabulary (also selectable as the penalty, "exact");
- `token_logp_and_entropy`, `masked_mean`: per-token log-probabilities and entropies, and means
  over the valid tokens;
- `a2c_loss`, `ppo_loss`: mean(u·actor) + c_v·value − c_e·entropy + α·mean(w·k), with token
  weights u on the policy-gradient term and w on the KL term;
- `kl_reward_penalty`, `kl_advantage_penalty`: the same penalty placed in the rewards (PPO-RLHF
  style) or, centred, in the advantages instead.

The token weights w and u come from `token_weights` (the paper's prioritized w = (1 − b)·Ĵ^β + b
and others), the certainty Ĵ from `certainty`; both are re-exported here, as part of this
module's public API.

Per-token arrays follow the `Trajectory` convention: entry [b, t] is about token `tokens[b, t]`.
"""
from typing import Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp

from critical_kl import softmax
from critical_kl.trajectory import Trajectory

# The public API's aliases (`losses.certainty`, `losses.prioritized_weights`, ...): the certainty
# Ĵ and the token weights live in their own modules, from which the library imports them.
from critical_kl.certainty import (  # pylint: disable=unused-import
    CERTAINTY_METHODS, certainty, ensemble_certainty, ensemble_logits,
    ensemble_mutual_information)
from critical_kl.token_weights import (  # pylint: disable=unused-import
    correct_prefix, critical_mask_weights, entropy_weights, prioritized_weights, top_entropy_mask)

ESTIMATORS = ("k1", "k2", "k3")
# What the losses accept as the penalty: a sampled estimator or the KL over the whole vocabulary.
KL_PENALTIES = ESTIMATORS + ("exact",)
KL_PLACEMENTS = ("loss", "reward", "advantage")

Metrics = dict[str, jnp.ndarray]


@flax.struct.dataclass
class LossConfig:
  """Hyper-parameters of the A2C / PPO losses.

  The numeric fields are pytree leaves, so a sweep over e.g. `kl_coef` can be vmapped; the
  others select code paths and are static.

  Attributes:
    estimator: KL penalty, one of `KL_PENALTIES`: a sampled estimator (`kl_estimate`) or "exact"
      (`exact_kl` at every position, only with kl_placement "loss": it needs the logits).
    kl_coef: α, weight of the KL penalty.
    value_coef: c_v, weight of the value loss.
    entropy_coef: c_e, weight of the entropy bonus.
    temperature: τ of π_θ = softmax(logits / τ); must be the sampling temperature.
    clip_eps: ε of the PPO clipped surrogate.
    kl_placement: where the penalty acts, one of `KL_PLACEMENTS`: "loss" (the term α·mean(w·k)
      of `a2c_loss` / `ppo_loss`), "reward" (`kl_reward_penalty`, added to the rewards before
      GAE) or "advantage" (`kl_advantage_penalty`, added to the advantages).
    use_kl: whether there is a KL penalty at all.
  """
  estimator: str = flax.struct.field(pytree_node=False, default="k2")
  kl_coef: float = 5.0
  value_coef: float = 0.1
  entropy_coef: float = 0.0005
  temperature: float = 2.0
  clip_eps: float = 0.2
  kl_placement: str = flax.struct.field(pytree_node=False, default="loss")
  use_kl: bool = flax.struct.field(pytree_node=False, default=True)


def validate_loss_config(cfg: LossConfig) -> None:
  """Raises ValueError if a field of `cfg` is out of range (traced fields are not checked)."""
  softmax.check_choice("estimator", cfg.estimator, KL_PENALTIES)
  softmax.check_choice("KL placement", cfg.kl_placement, KL_PLACEMENTS)
  if cfg.estimator == "exact" and cfg.kl_placement != "loss":
    raise ValueError(f"estimator 'exact' needs the logits, which only the losses have; got "
                     f"kl_placement {cfg.kl_placement!r}, use 'loss'.")
  softmax.check_concrete(cfg.temperature, lambda t: t > 0, "temperature must be > 0")
  for name in ("kl_coef", "value_coef", "entropy_coef", "clip_eps"):
    softmax.check_concrete(getattr(cfg, name), lambda v: v >= 0, f"{name} must be >= 0")


def _estimate(rho: jnp.ndarray, estimator: str) -> jnp.ndarray:
  """The KL estimator `estimator` of the log-ratio ρ, elementwise."""
  softmax.check_choice("estimator", estimator, ESTIMATORS)
  if estimator == "k1":
    return rho
  if estimator == "k2":
    return 0.5 * jnp.square(rho)
  return jnp.expm1(-rho) + rho


def kl_estimate(logp: chex.Array, ref_logp: chex.Array, estimator: str = "k2") -> jnp.ndarray:
  """Per-token estimate of KL(π_θ‖π_ref) from the log-probabilities of tokens sampled from π_θ.

  With ρ = logp − ref_logp: k1 = ρ, k2 = ½ρ², k3 = (e^{−ρ} − 1) + ρ. k1 and k3 are unbiased
  estimates of the KL value; differentiated as a loss term, k2 gives the unbiased gradient of
  KL(π_θ‖π_ref), k1 gives zero in expectation and k3 the gradient of the reverse KL(π_ref‖π_θ).
  The penalty "exact" of the losses is `exact_kl`, which needs the full distributions.

  Args:
    logp: [...], log π_θ(token).
    ref_logp: [...], log π_ref(token), same shape.
    estimator: one of `ESTIMATORS`.

  Returns:
    [...], the estimate for each token.
  """
  logp, ref_logp = jnp.asarray(logp), jnp.asarray(ref_logp)
  chex.assert_equal_shape([logp, ref_logp])
  return _estimate(logp - ref_logp, estimator)


def exact_kl(logits: chex.Array, ref_logits: chex.Array, temperature: float) -> jnp.ndarray:
  """KL(π_θ‖π_ref) over the whole vocabulary, π = softmax(logits / temperature).

  Args:
    logits: [..., V], logits of π_θ.
    ref_logits: [..., V], logits of π_ref, same shape.
    temperature: τ > 0, applied to both.

  Returns:
    [...], Σ_v π_θ(v)·(log π_θ(v) − log π_ref(v)).
  """
  chex.assert_equal_shape([logits, ref_logits])
  log_probs = softmax.log_softmax(logits, temperature)
  ref_log_probs = softmax.log_softmax(ref_logits, temperature)
  return jnp.sum(jnp.exp(log_probs) * (log_probs - ref_log_probs), axis=-1)


def token_logp_and_entropy(logits: chex.Array, tokens: chex.Array,
                           temperature: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Log-probability of each token and entropy of its distribution, π = softmax(logits / τ).

  Args:
    logits: [B, T, V], aligned to `tokens` (entry t is the distribution of token t).
    tokens: int [B, T].
    temperature: τ > 0.

  Returns:
    logp: [B, T], log π(tokens[b, t]).
    entropy: [B, T], H(π) at each position.
  """
  chex.assert_rank([logits, tokens], [3, 2])
  chex.assert_equal_shape_prefix([logits, tokens], 2)
  log_probs = softmax.log_softmax(logits, temperature)
  logp = jnp.take_along_axis(log_probs, jnp.asarray(tokens)[..., None], axis=-1)[..., 0]
  return logp, softmax.entropy(log_probs)


def masked_mean(x: chex.Array, mask: chex.Array) -> jnp.ndarray:
  """sum(x·mask) / max(sum(mask), 1): the mean over valid entries, 0 if there are none.

  Args:
    x: [...].
    mask: [...], same shape, 1 on valid entries.

  Returns:
    A scalar.
  """
  chex.assert_equal_shape([x, mask])
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _masked_log_ratio(logp: jnp.ndarray, other_logp: jnp.ndarray,
                      mask: jnp.ndarray) -> jnp.ndarray:
  """logp − stop_gradient(other_logp) on valid tokens, 0 elsewhere; all [B, T].

  Prompt and padding positions can hold arbitrary log-probabilities; an exponential of them
  (k3, the PPO ratio) could overflow there, and 0·inf = NaN would leak through the mask.
  """
  other_logp = jnp.where(mask > 0, other_logp, logp)
  return logp - jax.lax.stop_gradient(other_logp)


ActorFn = Callable[[jnp.ndarray, Trajectory, jnp.ndarray, LossConfig],
                   tuple[jnp.ndarray, Metrics]]


def _a2c_actor(logp: jnp.ndarray, traj: Trajectory, advantages: jnp.ndarray,
               cfg: LossConfig) -> tuple[jnp.ndarray, Metrics]:
  """Per-token objective log π_θ(a_t)·A_t; logp and advantages [B, T]."""
  del traj, cfg  # The A2C objective needs neither π_old nor a hyper-parameter.
  return logp * advantages, {}


def _ppo_actor(logp: jnp.ndarray, traj: Trajectory, advantages: jnp.ndarray,
               cfg: LossConfig) -> tuple[jnp.ndarray, Metrics]:
  """Per-token objective min(r·A, clip(r, 1 ± ε)·A), r = π_θ / π_old; logp and advantages [B, T]."""
  log_ratio = _masked_log_ratio(logp, traj.logp, traj.mask)
  ratio = jnp.exp(log_ratio)
  clipped = jnp.clip(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps)
  surrogate = jnp.minimum(ratio * advantages, clipped * advantages)
  metrics = {
      "clip_fraction": masked_mean(
          (jnp.abs(ratio - 1.0) > cfg.clip_eps).astype(jnp.float32), traj.mask),
      # k3 of KL(π_old‖π_θ): the tokens were sampled from π_old.
      "approx_kl": masked_mean(_estimate(-jax.lax.stop_gradient(log_ratio), "k3"), traj.mask),
  }
  return surrogate, metrics


def _policy_loss(actor_fn: ActorFn, logits: chex.Array, values: chex.Array,
                 ref_logits: chex.Array, traj: Trajectory, advantages: chex.Array,
                 returns: chex.Array, kl_weights: chex.Array, cfg: LossConfig,
                 pg_weights: chex.Array | None) -> tuple[jnp.ndarray, Metrics]:
  """The terms shared by `a2c_loss` and `ppo_loss` around the actor objective `actor_fn`."""
  validate_loss_config(cfg)
  chex.assert_rank([logits, ref_logits, values], [3, 3, 2])
  chex.assert_equal_shape([logits, ref_logits])
  mask = traj.mask
  # Ones are exact: the default leaves the actor term bit-identical to an unweighted one.
  pg_weights = jnp.ones_like(mask) if pg_weights is None else pg_weights
  chex.assert_equal_shape([values, traj.tokens, mask, traj.ref_logp, advantages, returns,
                           kl_weights, pg_weights])
  advantages, returns, kl_weights, pg_weights, ref_logits = jax.lax.stop_gradient(
      (advantages, returns, kl_weights, pg_weights, ref_logits))

  logp, entropy = token_logp_and_entropy(logits, traj.tokens, cfg.temperature)
  actor_objective, actor_metrics = actor_fn(logp, traj, advantages, cfg)
  actor_loss = -masked_mean(pg_weights * actor_objective, mask)
  value_loss = masked_mean(jnp.square(returns - values), mask)
  mean_entropy = masked_mean(entropy, mask)
  # ρ is differentiated through the policy's own log-probability of the taken token, the exact
  # KL through all of the policy's logits.
  rho = _masked_log_ratio(logp, traj.ref_logp, mask)
  kl = {name: _estimate(rho, name) for name in ESTIMATORS}
  kl["exact"] = exact_kl(logits, ref_logits, cfg.temperature)
  kl_weighted = masked_mean(kl_weights * kl[cfg.estimator], mask)

  loss = actor_loss + cfg.value_coef * value_loss - cfg.entropy_coef * mean_entropy
  if cfg.use_kl and cfg.kl_placement == "loss":
    loss = loss + cfg.kl_coef * kl_weighted

  critical = traj.critical.astype(mask.dtype) * mask
  metrics = {
      "loss": loss,
      "actor_loss": actor_loss,
      "value_loss": value_loss,
      "entropy": mean_entropy,
      **{f"kl_{name}": masked_mean(k, mask) for name, k in kl.items()},
      "kl_weighted": kl_weighted,
      "kl_critical": masked_mean(kl[cfg.estimator], critical),
      "kl_other": masked_mean(kl[cfg.estimator], mask - critical),
      "certainty_mean": masked_mean(traj.certainty, mask),
      "certainty_critical": masked_mean(traj.certainty, critical),
      "weight_mean": masked_mean(kl_weights, mask),
      "pg_weight_mean": masked_mean(pg_weights, mask),
      **actor_metrics,
  }
  return loss, jax.lax.stop_gradient(metrics)


def a2c_loss(logits: chex.Array, values: chex.Array, ref_logits: chex.Array, traj: Trajectory,
             advantages: chex.Array, returns: chex.Array, kl_weights: chex.Array,
             cfg: LossConfig, pg_weights: chex.Array | None = None) -> tuple[jnp.ndarray, Metrics]:
  """A2C loss with a (prioritized) KL penalty (SPEC §5), and optional policy-gradient weights.

  loss = actor + c_v·value − c_e·entropy + α·mean_t[w_t·k_t], with actor =
  −mean_t[u_t·log π_θ(a_t)·A_t], value = mean_t[(R_t − V(s_t))²], entropy = mean_t[H(π_θ)], means
  over `traj.mask`; k_t is `cfg.estimator` of ρ_t = log π_θ(a_t) − log π_ref(a_t), or the exact
  KL at position t. The KL term is left out unless `cfg.use_kl` and `cfg.kl_placement` is
  "loss" (see `kl_reward_penalty`, `kl_advantage_penalty`).

  Args:
    logits: [B, T, V], the current policy's logits aligned to `traj.tokens` (entry t is the
      distribution of token t; see `trajectory.align_to_tokens`).
    values: [B, T], the current value of each token's prefix.
    ref_logits: [B, T, V], the reference model's logits, aligned likewise, at `cfg.temperature`
      (for an ensemble, `ensemble_logits`); used by the "exact" penalty and the `kl_exact`
      metric; not differentiated.
    traj: the batch. ρ = logp − traj.ref_logp, so the loss and `kl_reward_penalty` use the same
      reference numbers; traj.ref_logp must be log softmax(ref_logits / cfg.temperature) at the
      taken tokens.
    advantages: [B, T], e.g. from `advantages.gae`; not differentiated.
    returns: [B, T], value targets; not differentiated.
    kl_weights: [B, T], w: ones for the standard KL penalty or `prioritized_weights(traj.certainty,
      β)` for the prioritized one; not differentiated.
    cfg: the hyper-parameters.
    pg_weights: [B, T], u, weights of the policy-gradient term (e.g. `top_entropy_mask`), None
      for ones; not differentiated. The mean stays over all valid tokens, so a mask that keeps a
      share ρ of them also scales the actor term by about ρ; divide u by `masked_mean(u, mask)`
      for the mean over the kept tokens.

  Returns:
    loss: a scalar.
    metrics: scalars loss, actor_loss, value_loss, entropy, kl_k1, kl_k2, kl_k3, kl_exact,
      kl_weighted (mean of w·k), kl_critical and kl_other (the chosen penalty on critical
      and on other tokens), certainty_mean, certainty_critical, weight_mean (of w) and
      pg_weight_mean (of u).
  """
  return _policy_loss(_a2c_actor, logits, values, ref_logits, traj, advantages, returns,
                      kl_weights, cfg, pg_weights)


def ppo_loss(logits: chex.Array, values: chex.Array, ref_logits: chex.Array, traj: Trajectory,
             advantages: chex.Array, returns: chex.Array, kl_weights: chex.Array,
             cfg: LossConfig, pg_weights: chex.Array | None = None) -> tuple[jnp.ndarray, Metrics]:
  """PPO loss with a (prioritized) KL penalty.

  As `a2c_loss` (same arguments and shapes) with the clipped surrogate as actor term,
  −mean_t[u_t·min(r·A, clip(r, 1 ± ε)·A)], r = exp(logp − traj.logp). The metrics add
  clip_fraction (share of tokens with |r − 1| > ε) and approx_kl (k3 of KL(π_old‖π_θ)).
  """
  return _policy_loss(_ppo_actor, logits, values, ref_logits, traj, advantages, returns,
                      kl_weights, cfg, pg_weights)


def _sampled_kl(traj: Trajectory, cfg: LossConfig) -> jnp.ndarray:
  """k(ρ) per token [B, T] at the sampling policy, ρ = traj.logp − traj.ref_logp; 0 off the mask."""
  return _estimate(_masked_log_ratio(traj.logp, traj.ref_logp, traj.mask), cfg.estimator)


def kl_reward_penalty(traj: Trajectory, kl_weights: chex.Array, cfg: LossConfig) -> jnp.ndarray:
  """Per-token reward penalty −α·w·k(ρ) of the PPO-RLHF placement, ρ = traj.logp − traj.ref_logp.

  It is zero unless `cfg.use_kl` and `cfg.kl_placement` is "reward", the case in which the
  losses leave their KL term out: a caller can always add it to the rewards before computing the
  advantages.

  Args:
    traj: the batch (its log-probabilities are those of the sampling policy).
    kl_weights: [B, T], as for `a2c_loss`.
    cfg: the hyper-parameters.

  Returns:
    [B, T], the penalty, 0 where `traj.mask` is 0; not differentiated.
  """
  validate_loss_config(cfg)
  chex.assert_equal_shape([traj.logp, traj.ref_logp, traj.mask, kl_weights])
  if not (cfg.use_kl and cfg.kl_placement == "reward"):
    return jnp.zeros_like(traj.logp)
  penalty = -cfg.kl_coef * kl_weights * _sampled_kl(traj, cfg) * traj.mask
  return jax.lax.stop_gradient(penalty)


def kl_advantage_penalty(traj: Trajectory, kl_weights: chex.Array,
                         cfg: LossConfig) -> jnp.ndarray:
  """Per-token advantage shift α·(mean_valid(w·k) − w_t·k_t) of the "advantage" placement.

  k = k(ρ), ρ = traj.logp − traj.ref_logp, and the mean is over the valid tokens of the batch.
  Added to the advantages (after `advantages.gae` and any normalisation, so that α keeps its
  scale), it makes the actor term carry the penalty at each token only, not through the returns
  of the earlier tokens as in the "reward" placement. With k1, the actor gradient gains
  α·mean_t[w_t·ρ_t·∇log π_θ(a_t)], the REINFORCE form of the weighted KL gradient, minus a
  baseline term of mean zero; the centring keeps the advantages' batch mean.

  It is zero unless `cfg.use_kl` and `cfg.kl_placement` is "advantage", the case in which the
  losses leave their KL term out.

  Args:
    traj: the batch (its log-probabilities are those of the sampling policy).
    kl_weights: [B, T], as for `a2c_loss`.
    cfg: the hyper-parameters.

  Returns:
    [B, T], the shift, 0 where `traj.mask` is 0; not differentiated.
  """
  validate_loss_config(cfg)
  chex.assert_equal_shape([traj.logp, traj.ref_logp, traj.mask, kl_weights])
  if not (cfg.use_kl and cfg.kl_placement == "advantage"):
    return jnp.zeros_like(traj.logp)
  penalty = kl_weights * _sampled_kl(traj, cfg) * traj.mask
  shift = cfg.kl_coef * (masked_mean(penalty, traj.mask) - penalty) * traj.mask
  return jax.lax.stop_gradient(shift)
