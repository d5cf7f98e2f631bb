"""RL fine-tuning with a (prioritized) KL penalty: collect → reference pass → advantages → update.

One iteration (SPEC §4–§5) is a pure function of (state, arm, problems) (`make_iteration`), jitted
for one run (`jit_iteration`) or vmapped over *runs* (`runs.make_runs_iteration`): a run is one
seed of one arm, and every arm (`arms`: the KL token-weight rule, a factor on α, a learning rate
held in the optimizer state) shares the compiled function. Problems are drawn on the host by
numpy, keyed by (seed, run seed, iteration), so a resumed run sees the same problems as an
uninterrupted one, and the arms of a comparison see the same problems for the same seed.
"""
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from critical_kl import advantages as advantages_lib
from critical_kl import arithmetic
from critical_kl import arms as arms_lib
from critical_kl import certainty as certainty_lib
from critical_kl import losses
from critical_kl import model as model_lib
from critical_kl import sampling
from critical_kl import selectivity
from critical_kl import sharding
from critical_kl import token_weights
from critical_kl import tokenizer
from critical_kl import trajectory as trajectory_lib

LOSSES = {"a2c": losses.a2c_loss, "ppo": losses.ppo_loss}


class RLState(NamedTuple):
  params: Any
  opt_state: Any
  key: jax.Array  # raw uint32 key data, so that checkpoints hold a plain array


class Batch(NamedTuple):
  """The problems of one collect, on the episode buffer of T = P + max_new_tokens positions.

  Attributes:
    problems: `sampling.Problems`, prompts [B, P].
    critical: bool [B, T], the buffer positions of the critical tokens of the correct completion.
    correct: int32 [B, T], prompt + correct completion, −1 after it: the path an episode follows
      while it makes no mistake.
  """
  problems: sampling.Problems
  critical: np.ndarray
  correct: np.ndarray


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError on hyper-parameters that cannot run (SPEC §5 ranges)."""
  losses.validate_loss_config(loss_config(config))
  if config.loss not in LOSSES:
    raise ValueError(f"unknown loss {config.loss!r}; valid: {', '.join(LOSSES)}")
  if config.certainty_method not in certainty_lib.CERTAINTY_METHODS:
    raise ValueError(f"unknown certainty method {config.certainty_method!r}; valid: "
                     f"{', '.join(certainty_lib.CERTAINTY_METHODS)}")
  checks = {"beta": config.beta >= 0, "intercept": config.intercept <= 0,
            "grad_clip": config.grad_clip >= 0,
            "certainty_temperature": config.certainty_temperature > 0,
            "learning_rate": config.learning_rate > 0, "extra_digits": config.extra_digits >= 1,
            "num_iterations": config.num_iterations >= 1, "num_seeds": config.num_seeds >= 1,
            "eval_chunk": config.get("eval_chunk", 0) >= 0,
            "gamma": 0 <= config.gamma <= 1, "lam": 0 <= config.lam <= 1}
  bad = [name for name, ok in checks.items() if not ok]
  if bad:
    raise ValueError("out of range: " + ", ".join(f"{n}={config[n]}" for n in bad))
  if config.episodes_per_collect % config.num_minibatches:
    raise ValueError(f"episodes_per_collect ({config.episodes_per_collect}) must be a multiple "
                     f"of num_minibatches ({config.num_minibatches})")


def loss_config(config: ml_collections.ConfigDict) -> losses.LossConfig:
  return losses.LossConfig(
      estimator=config.estimator, kl_coef=config.kl_coef, value_coef=config.value_coef,
      entropy_coef=config.entropy_coef, temperature=config.temperature,
      clip_eps=config.clip_eps, use_kl=config.use_kl, kl_placement=config.kl_placement)


class Task(NamedTuple):
  """Sizes and vocabulary fixed by the pre-trained model and the RL distribution "N + k"."""
  n_max: int
  digits: int  # N + k, the longest operand
  prompt_length: int
  max_new_tokens: int
  vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT


def make_task(n_max: int, extra_digits: int,
              vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT) -> Task:
  digits = n_max + extra_digits
  nines = 10**digits - 1
  return Task(n_max, digits, len(arithmetic.prompt(nines, nines)),
              arithmetic.max_episode_length(digits), vocabulary)


def critical_positions(operands: np.ndarray, n_max: int, prompt_lengths, total: int) -> np.ndarray:
  """bool [B, total]: buffer positions of the critical tokens of each problem's correct completion."""
  mask = np.zeros((len(operands), total), bool)
  for row, ((a, b), start) in enumerate(zip(operands, np.asarray(prompt_lengths))):
    offsets = [t["offset"] for t in arithmetic.critical_tokens(int(a), int(b), n_max)]
    mask[row, start + np.asarray(offsets, int)] = True
  return mask


def make_batch(operands: np.ndarray, task: Task) -> Batch:
  problems = sampling.encode_problems(operands, task.prompt_length, task.vocabulary)
  total = task.prompt_length + task.max_new_tokens
  texts = [arithmetic.prompt(int(a), int(b)) + arithmetic.scratchpad(int(a), int(b))
           for a, b in operands]
  correct, lengths = task.vocabulary.encode_batch(texts, length=total)
  correct = np.where(np.arange(total)[None, :] < lengths[:, None], correct, -1).astype(np.int32)
  return Batch(problems, critical_positions(operands, task.n_max, problems.prompt_lengths, total),
               correct)


def collect_batch(config: ml_collections.ConfigDict, task: Task, run_seed: int,
                  iteration: int) -> Batch:
  """The RL problems ("N + k", SPEC §4) of one run at one iteration."""
  rng = np.random.default_rng([config.seed, run_seed, iteration])
  operands = arithmetic.sample_rl(rng, config.episodes_per_collect, task.n_max,
                                  config.extra_digits)
  return make_batch(operands, task)


def make_optimizer(config: ml_collections.ConfigDict,
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


def init_state(params, config: ml_collections.ConfigDict, key: jax.Array,
               learning_rate: float | None = None) -> RLState:
  """A run's state; `learning_rate` (default the config's) is kept in its optimizer state."""
  return RLState(params, make_optimizer(config, learning_rate).init(params),
                 jax.random.key_data(key))


def reference_pass(ref_params, gpt: model_lib.GPTConfig, traj: trajectory_lib.Trajectory,
                   config: ml_collections.ConfigDict):
  """Teacher-forced pass of the frozen model: fills ref_logp and certainty; returns ref logits.

  Returns:
    (trajectory, ref_logits [B, T, V] aligned to the tokens).
  """
  ref_logits = trajectory_lib.align_to_tokens(model_lib.forward(ref_params, gpt, traj.tokens).logits)
  ref_logp, _ = losses.token_logp_and_entropy(ref_logits, traj.tokens, config.temperature)
  certainty = certainty_lib.certainty(ref_logits, config.certainty_method,
                                      config.certainty_temperature)
  return traj.replace(ref_logp=ref_logp, certainty=certainty), ref_logits


def _minibatch_loss(params, gpt, config, minibatch):
  """The configured loss (`LOSSES`) of the current parameters on one minibatch."""
  traj, ref_logits, adv, ret, weights, pg_weights = minibatch
  out = model_lib.forward(params, gpt, traj.tokens)
  logits = trajectory_lib.align_to_tokens(out.logits)
  values = trajectory_lib.align_to_tokens(out.values)
  return LOSSES[config.loss](logits, values, ref_logits, traj, adv, ret, weights,
                             loss_config(config), pg_weights)


def kl_weights(arm: arms_lib.RunArms, certainty, critical_on_path, ref_entropy,
               intercept) -> jnp.ndarray:
  """The arm's KL token weights [B, T] before its α factor (`arms.RULES`): Ĵ^β, the oracle's
  critical mask, or (1 + H_ref)^−c; the inputs are [B, T]."""
  choices = {"certainty": lambda: token_weights.prioritized_weights(certainty, arm.beta, intercept),
             "oracle": lambda: token_weights.critical_mask_weights(critical_on_path),
             "entropy": lambda: token_weights.entropy_weights(ref_entropy, arm.entropy_exponent)}
  return jnp.select([arm.rule == i for i in range(len(arms_lib.RULES))],
                    [choices[rule]() for rule in arms_lib.RULES])


def make_iteration(gpt: model_lib.GPTConfig, config: ml_collections.ConfigDict, task: Task,
                   axis_name: str | None = None):
  """Returns iteration(state, arm, batch, ref_params) → (state, metrics), ONE run.

  Shapes: `arm` a `arms.RunArms` of scalars (vmappable), `batch` a `Batch` (problems [B, P],
  critical and correct [B, T]). Metrics are scalars.
  The reference parameters are an argument, not a closure constant, so that they are not baked
  into the compiled program. `axis_name`: the name of the vmapped runs axis, if any (see
  `runs.vmap_runs`). Jitted: `jit_iteration` (one run), `runs.make_runs_iteration` (R runs).
  """
  optimizer = make_optimizer(config)
  loss_cfg = loss_config(config)
  grad_fn = jax.grad(functools.partial(_minibatch_loss, gpt=gpt, config=config), has_aux=True)

  def update(state: RLState, minibatches):
    def step(carry, minibatch):
      params, opt_state = carry
      grads, metrics = grad_fn(params, minibatch=minibatch)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), metrics
    (params, opt_state), metrics = jax.lax.scan(step, (state.params, state.opt_state), minibatches)
    return params, opt_state, jax.tree_util.tree_map(jnp.mean, metrics)

  def iteration(state: RLState, arm: arms_lib.RunArms, batch: Batch, ref_params):
    problems = batch.problems
    key, rollout_key, perm_key = jax.random.split(jax.random.wrap_key_data(state.key), 3)
    traj = sampling.rollout(state.params, gpt, problems, rollout_key,
                            max_new_tokens=task.max_new_tokens, temperature=config.temperature,
                            failure_reward=config.failure_reward, axis_name=axis_name,
                            vocabulary=task.vocabulary)
    traj, ref_logits = reference_pass(ref_params, gpt, traj, config)
    # A critical position counts as one only while the episode is still on the correct path:
    # after an early mistake its text there is something else (SPEC §6).
    traj = traj.replace(critical=batch.critical
                        & token_weights.correct_prefix(traj.tokens, batch.correct, traj.mask))
    _, ref_entropy = losses.token_logp_and_entropy(ref_logits, traj.tokens,
                                                   config.certainty_temperature)
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


def jit_iteration(gpt: model_lib.GPTConfig, config: ml_collections.ConfigDict, task: Task,
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


class TeacherSet(NamedTuple):
  """Correct completions of fixed problems for teacher-forced measurements.

  tokens int32 [B, T] (prompt + completion), mask float32 [B, T] on completion tokens,
  critical float32 [B, T] on critical tokens (SPEC §6).
  """
  tokens: np.ndarray
  mask: np.ndarray
  critical: np.ndarray


def teacher_set(operands: np.ndarray, n_max: int,
                vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT) -> TeacherSet:
  prompts = [arithmetic.prompt(int(a), int(b)) for a, b in operands]
  texts = [p + arithmetic.scratchpad(int(a), int(b)) for p, (a, b) in zip(prompts, operands)]
  tokens, lengths = vocabulary.encode_batch(texts)
  starts = np.array([len(p) for p in prompts])
  index = np.arange(tokens.shape[1])[None, :]
  mask = (index >= starts[:, None]) & (index < lengths[:, None])
  critical = critical_positions(operands, n_max, starts, tokens.shape[1])
  return TeacherSet(tokens, mask.astype(np.float32), critical.astype(np.float32))
