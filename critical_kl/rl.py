"""RL fine-tuning with a (prioritized) KL penalty: collect → reference pass → advantages → update.

One iteration (SPEC §4–§5) is a pure function of (state, arm, problems) (`make_iteration`), jitted
for one run (`jit_iteration`) or vmapped over *runs* (`runs.make_runs_iteration`): a run is one
seed of one arm, and every arm (`arms`: the KL token-weight rule, a factor on α, a learning rate
held in the optimizer state) shares the compiled function. The hyper-parameters are a typed
`rl_config.RLConfig`; the problems of a collect come from the host (`task.collect_batch`).
"""
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from critical_kl import advantages as advantages_lib
from critical_kl import arms as arms_lib
from critical_kl import evaluation
from critical_kl import losses
from critical_kl import model as model_lib
from critical_kl import rl_config as rl_config_lib
from critical_kl import sampling
from critical_kl import selectivity
from critical_kl import sharding
from critical_kl import task as task_lib
from critical_kl import token_weights
from critical_kl import trajectory as trajectory_lib

# The loss of each objective (`RLConfig.objective`).
LOSSES = dict(zip(rl_config_lib.OBJECTIVES, (losses.a2c_loss, losses.ppo_loss)))


class RLState(NamedTuple):
  params: Any
  opt_state: Any
  key: jax.Array  # raw uint32 key data, so that checkpoints hold a plain array


def make_optimizer(config: rl_config_lib.RLConfig,
                   learning_rate: float | None = None) -> optax.GradientTransformation:
  """Adam with the learning rate as a leaf of its state (`optax.inject_hyperparams`), so that runs
  of one vmapped program may each have their own; gradient clipping only when grad_clip > 0 (the
  authors' code clips nothing).

  The rate given here is the one `init` stores; `update` reads it from the state.
  """
  rate = config.learning_rate if learning_rate is None else learning_rate
  adam = optax.inject_hyperparams(optax.adam)(learning_rate=rate)
  if not config.grad_clip:
    return adam
  return optax.chain(optax.clip_by_global_norm(config.grad_clip), adam)


def init_state(params, config: rl_config_lib.RLConfig, key: jax.Array,
               learning_rate: float | None = None) -> RLState:
  """A run's state; `learning_rate` (default the config's) is kept in its optimizer state."""
  return RLState(params, make_optimizer(config, learning_rate).init(params),
                 jax.random.key_data(key))


def reference_pass(ref_params, gpt: model_lib.GPTConfig, traj: trajectory_lib.Trajectory,
                   config: rl_config_lib.RLConfig, ensemble: bool = False):
  """Teacher-forced pass of the frozen model (`evaluation.teacher_forced_scores`): fills ref_logp
  (at τ) and certainty (the config's method and τ_c); returns ref logits. With `ensemble`,
  `ref_params` are a reference ensemble's stacked members and the reference is their mixture.

  Returns:
    (trajectory, ref_logits [B, T, V] aligned to the tokens).
  """
  scores = evaluation.teacher_forced_scores(
      ref_params, gpt, traj.tokens, temperature=config.temperature,
      certainty_method=config.certainty_method,
      certainty_temperature=config.certainty_temperature, ensemble=ensemble,
      epistemic=config.ensemble_epistemic)
  return traj.replace(ref_logp=scores.logp, certainty=scores.certainty), scores.logits


def _with_ensemble(use, traj: trajectory_lib.Trajectory, ref_logits, members, gpt, config):
  """The reference fields of `traj` and the ref logits replaced by the ensemble's mixture where
  the run's arm says so (`use`, a scalar bool: a select, so that the runs stay one program)."""
  mixed, mixed_logits = reference_pass(members, gpt, traj, config, ensemble=True)
  pick = lambda new, old: jnp.where(use, new, old)
  return (traj.replace(ref_logp=pick(mixed.ref_logp, traj.ref_logp),
                       certainty=pick(mixed.certainty, traj.certainty)),
          pick(mixed_logits, ref_logits))


def _minibatch_objective(params, gpt, config: rl_config_lib.RLConfig, minibatch):
  """The configured objective (`LOSSES`) of the current parameters on one minibatch."""
  traj, ref_logits, adv, ret, weights, pg_weights = minibatch
  out = model_lib.forward(params, gpt, traj.tokens)
  logits = trajectory_lib.align_to_tokens(out.logits)
  values = trajectory_lib.align_to_tokens(out.values)
  return LOSSES[config.objective](logits, values, ref_logits, traj, adv, ret, weights,
                                  config.loss, pg_weights)


def kl_weights(arm: arms_lib.RunArms, certainty, critical_on_path, ref_entropy,
               intercept) -> jnp.ndarray:
  """The arm's KL token weights [B, T] before its α factor (`arms.RULES`): Ĵ^β, the oracle's
  critical mask, or (1 + H_ref)^−c; the inputs are [B, T]."""
  choices = {"certainty": lambda: token_weights.prioritized_weights(certainty, arm.beta, intercept),
             "oracle": lambda: token_weights.critical_mask_weights(critical_on_path),
             "entropy": lambda: token_weights.entropy_weights(ref_entropy, arm.entropy_exponent)}
  return jnp.select([arm.rule == i for i in range(len(arms_lib.RULES))],
                    [choices[rule]() for rule in arms_lib.RULES])


def make_iteration(gpt: model_lib.GPTConfig, config: rl_config_lib.RLConfig,
                   task: task_lib.Task, axis_name: str | None = None):
  """Returns iteration(state, arm, batch, ref_params) → (state, metrics), ONE run.
  With `config.reference_ensemble`, `ref_params` is the pair (reference parameters, the
  ensemble's stacked members); the "ensemble" arms use the members' mixture as the reference.

  Shapes: `arm` a `arms.RunArms` of scalars (vmappable), `batch` a `task.Batch` (problems [B, P],
  critical and correct [B, T]). Metrics are scalars.
  The reference parameters are an argument, not a closure constant, so that they are not baked
  into the compiled program. `axis_name`: the name of the vmapped runs axis, if any (see
  `runs.vmap_runs`). Jitted: `jit_iteration` (one run), `runs.make_runs_iteration` (R runs).
  """
  optimizer = make_optimizer(config)
  loss_cfg = config.loss
  rules = task_lib.episode_rules(task.vocabulary)
  grad_fn = jax.grad(functools.partial(_minibatch_objective, gpt=gpt, config=config),
                     has_aux=True)

  def update(state: RLState, minibatches):
    def step(carry, minibatch):
      params, opt_state = carry
      grads, metrics = grad_fn(params, minibatch=minibatch)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), metrics
    (params, opt_state), metrics = jax.lax.scan(step, (state.params, state.opt_state), minibatches)
    return params, opt_state, jax.tree_util.tree_map(jnp.mean, metrics)

  def iteration(state: RLState, arm: arms_lib.RunArms, batch: task_lib.Batch, ref_params):
    problems = batch.problems
    key, rollout_key, perm_key = jax.random.split(jax.random.wrap_key_data(state.key), 3)
    traj = sampling.rollout(state.params, gpt, problems, rollout_key, rules=rules,
                            max_new_tokens=task.max_new_tokens, temperature=config.temperature,
                            failure_reward=config.failure_reward, axis_name=axis_name)
    members = None
    if config.reference_ensemble:
      ref_params, members = ref_params
    traj, ref_logits = reference_pass(ref_params, gpt, traj, config)
    # The entropy rule reads the single reference, whatever the arm.
    _, ref_entropy = losses.token_logp_and_entropy(ref_logits, traj.tokens,
                                                   config.certainty_temperature)
    if members is not None:
      traj, ref_logits = _with_ensemble(arm.ensemble, traj, ref_logits, members, gpt, config)
    # A critical position counts as one only while the episode is still on the correct path:
    # after an early mistake its text there is something else (SPEC §6).
    traj = traj.replace(critical=batch.critical
                        & token_weights.correct_prefix(traj.tokens, batch.correct, traj.mask))
    unscaled = kl_weights(arm, traj.certainty, traj.critical, ref_entropy, config.intercept)
    weights = arm.kl_scale * unscaled
    # Over the whole collect, before the minibatches: the quantile is the batch's.
    pg_weights = token_weights.top_entropy_mask(traj.entropy, traj.mask, arm.pg_top_share)
    rewards = traj.rewards + losses.kl_reward_penalty(traj, weights, loss_cfg)
    adv, ret = advantages_lib.gae(rewards, traj.values, traj.mask, config.gamma, config.lam)
    if config.normalize_advantages:
      adv = advantages_lib.normalize(adv, traj.mask)
    # After normalization, so that α keeps its scale; zero unless kl_placement is "advantage".
    adv = adv + losses.kl_advantage_penalty(traj, weights, loss_cfg)
    order = jax.random.permutation(perm_key, problems.prompts.shape[0])
    split = lambda x: x[order].reshape((config.num_minibatches, -1) + x.shape[1:])
    minibatches = jax.tree_util.tree_map(split, (traj, ref_logits, adv, ret, weights, pg_weights))
    params, opt_state, metrics = update(state, minibatches)
    figures = selectivity.selectivity(unscaled, traj.critical, traj.mask)
    metrics = dict(metrics, **{f"selectivity_{k}": v for k, v in figures.items()},
                   success=jnp.mean(traj.solved.astype(jnp.float32)),
                   episode_length=jnp.mean(traj.lengths.astype(jnp.float32)),
                   max_length_share=jnp.mean(traj.termination == trajectory_lib.MAX_LENGTH))
    return RLState(params, opt_state, jax.random.key_data(key)), metrics

  return iteration


def jit_iteration(gpt: model_lib.GPTConfig, config: rl_config_lib.RLConfig, task: task_lib.Task,
                  state: RLState | None = None, mesh: jax.sharding.Mesh | None = None):
  """`make_iteration` (ONE run) jitted, on one device or on a mesh.

  Args:
    gpt, config, task: as for `make_iteration`.
    state: the run's `RLState` (or its `jax.eval_shape`), for the shardings; needed with a mesh
      only. Pass the state and the reference parameters through `sharding.place_state` first.
    mesh: from `sharding.make_mesh`, or None for one device.

  Returns:
    iteration(state, arm, batch, ref_params) → (state, metrics), as `make_iteration`. On a mesh
    the episodes are split along "data" (B must be divisible by the data axis; ValueError
    otherwise) and the parameters and optimizer state FSDP-sharded.
  """
  iteration = make_iteration(gpt, config, task)
  if mesh is None:
    return jax.jit(iteration)
  if state is None:
    raise ValueError("an iteration on a mesh needs the state (or its jax.eval_shape) for the "
                     "shardings")
  state_shardings = sharding.param_sharding(state, mesh)
  step = jax.jit(iteration,
                 in_shardings=(state_shardings, sharding.replicated(mesh),
                               sharding.batch_sharding(mesh),
                               sharding.param_sharding(state.params, mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)))

  def sharded_iteration(state, arm, batch, ref_params):
    sharding.check_batch(batch.problems.prompts.shape[0], mesh)
    return step(state, arm, batch, ref_params)
  return sharded_iteration
