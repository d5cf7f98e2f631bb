"""Supervised pre-training on 1..N-digit scratchpad addition (SPEC §3).

Next-token cross-entropy on completion tokens only (the prompt is masked), teacher forcing. Every
step draws fresh problems, each operand's length uniform in 1..N; the numpy generator of step s is
seeded by (seed, s), so a resumed run sees exactly the batches an uninterrupted one would.

[ours] With `config.held_out_digits = k > 0`, a share `config.held_out_fraction` of each batch is
drawn from "RL on N+j" problems (j uniform in 1..k) whose critical decisions are held out of the
loss: the critical tokens of SPEC §6 and the `]` that closes each critical run. Such a reference
learns everything about longer numbers but when to stop copying an operand, the decision the paper
finds uncertain. With `config.held_out_scope = "lines"` the loss skips every token of those rows up
to the end of the last line with a critical token, so nothing in them is learnt by reading the
longer operand. `config.init_checkpoint` starts from an exported model's parameters.

[ours] With `config.ensemble_members = K > 0` the run trains K models in one vmapped program, a
reference ensemble (the paper's footnote 2): member k draws its own problems and start positions
(seed `config.seed + k`) and, without `init_checkpoint`, its own initial parameters. The state,
checkpoints and exported model hold the members stacked on a leading axis of size K.

With `config.sharding` (see `sharding`) the step runs on a device mesh. Across several processes
each one draws the same problems but encodes only the rows its devices hold, so the global batch
is the same for any number of processes.
"""
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from critical_kl import arithmetic
from critical_kl import checkpoints
from critical_kl import distributed
from critical_kl import divergence
from critical_kl import evaluation
from critical_kl import model as model_lib
from critical_kl import pretrain_config as pretrain_config_lib
from critical_kl import sharding
from critical_kl import task as task_lib

# The ConfigDict readers of pre-training, where the loop's entry and the mains use them.
model_config = pretrain_config_lib.model_config
saved_config = pretrain_config_lib.saved_config


def _sample_problems(config: pretrain_config_lib.PretrainConfig, rng: np.random.Generator):
  """The operands [B, 2] of one batch and bool [B]: the row is a held-out-decision problem."""
  n, batch = config.pretrain_max_digits, config.batch_size
  operands = arithmetic.sample_balanced(rng, batch, n)
  longer = np.zeros(batch, bool)
  if config.held_out_digits:
    longer = rng.random(batch) < config.held_out_fraction
    gaps = rng.integers(1, config.held_out_digits + 1, size=batch)
    for gap in range(1, config.held_out_digits + 1):
      rows = longer & (gaps == gap)
      operands[rows] = arithmetic.sample_rl(rng, int(rows.sum()), n, gap)
  return operands, longer


def held_out_mask(a: int, b: int, n_max: int, scope: str = "decisions") -> np.ndarray:
  """bool [len(scratchpad(a, b))]: the completion tokens a held-out row leaves out of the loss.

  scope "decisions": the critical tokens and the `]` closing each critical run. scope "lines":
  every token up to the end of the last line holding a critical token (its `\n` included), so
  that no target of the row depends on reading the longer operand from the prompt: the later
  lines copy their lists from the line above.
  """
  completion = arithmetic.scratchpad(a, b)
  mask = arithmetic.critical_mask(a, b, n_max)
  if scope == "lines":
    last = np.flatnonzero(mask).max(initial=-1)
    end = completion.find("\n", last) if last >= 0 else -1
    mask[:end + 1] = True
    return mask
  after = np.flatnonzero(mask) + 1
  mask[after[[completion[i] == "]" for i in after]]] = True
  return mask


def make_batch(config: pretrain_config_lib.PretrainConfig, step: int,
               rows: np.ndarray | None = None):
  """The training batch of `step`, or its rows `rows` (default: all B = config.batch_size).

  The random draws are those of the whole batch whatever `rows` is, so make_batch(c, s, rows)
  equals make_batch(c, s)[rows], row by row; only the chosen rows are encoded.

  Returns:
    tokens int32 [R, L], positions int32 [R, L], loss_mask float32 [R, L] (1 on completion tokens
    but held-out decisions), with L the longest problem (N + held_out_digits digits) and
    R = len(rows) (B by default).
  """
  rng = np.random.default_rng([config.seed, step])
  operands, longer = _sample_problems(config, rng)
  if rows is not None:
    operands, longer = operands[rows], longer[rows]
  length = arithmetic.max_sequence_length(config.longest_operand)
  correct = task_lib.correct_completions(operands, config.pretrain_max_digits, length)
  tokens, prompt_lengths, loss_mask = correct.tokens, correct.prompt_lengths, correct.mask
  index = np.arange(length)[None, :]
  for row in np.flatnonzero(longer):
    a, b = (int(x) for x in operands[row])
    held = np.flatnonzero(
        held_out_mask(a, b, config.pretrain_max_digits, config.held_out_scope))
    loss_mask[row, prompt_lengths[row] + held] = False
  offsets = np.zeros((len(operands), 1), np.int64)
  if config.random_start_positions:
    offsets = rng.integers(0, config.model.block_size - length + 1,
                           size=(config.batch_size, 1))
    if rows is not None:
      offsets = offsets[rows]
  return tokens, (offsets + index).astype(np.int32), loss_mask.astype(np.float32)


def make_optimizer(config: pretrain_config_lib.PretrainConfig) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps, max(config.num_steps, config.warmup_steps + 1),
      end_value=config.learning_rate * config.min_learning_rate_ratio)
  return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                     optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=config.weight_decay))


def completion_loss(params, gpt: model_lib.GPTConfig, tokens, positions, loss_mask):
  """Mean next-token cross-entropy over completion tokens. Shapes as in `make_batch`."""
  logits = model_lib.forward(params, gpt, tokens, positions).logits[:, :-1]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  mask = loss_mask[:, 1:]
  return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_train_step(gpt: model_lib.GPTConfig, optimizer: optax.GradientTransformation,
                    state: dict[str, Any] | None = None, mesh: jax.sharding.Mesh | None = None):
  """The jitted step: step(state, tokens, positions, loss_mask) → (state, loss).

  Args:
    gpt: the model config.
    optimizer: from `make_optimizer`.
    state: the training state (or its `jax.eval_shape`), for the shardings; needed with a mesh
      only. Pass the state itself through `sharding.place_state` before the first step.
    mesh: from `sharding.make_mesh`, or None for one device.

  Returns:
    A function of (state dict (params, opt_state, step, key), tokens [B, L], positions [B, L],
    loss_mask [B, L]) → (state, scalar loss). On a mesh the batch is split along "data" (B must
    be divisible by the data axis; ValueError otherwise) and the state FSDP-sharded.
  """
  def train_step(state, tokens, positions, loss_mask):
    loss, grads = jax.value_and_grad(completion_loss)(state["params"], gpt, tokens, positions,
                                                      loss_mask)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return dict(state, params=params, opt_state=opt_state, step=state["step"] + 1), loss

  if mesh is None:
    return jax.jit(train_step)
  if state is None:
    raise ValueError("a train step on a mesh needs the state (or its jax.eval_shape) for the "
                     "shardings")
  state_shardings = sharding.param_sharding(state, mesh)
  batch = sharding.batch_sharding(mesh)
  step = jax.jit(train_step, in_shardings=(state_shardings, batch, batch, batch),
                 out_shardings=(state_shardings, sharding.replicated(mesh)))

  def sharded_step(state, tokens, positions, loss_mask):
    # Checked here, where the message can name the batch, rather than by jit's sharding error.
    sharding.check_batch(tokens.shape[0], mesh)
    return step(state, tokens, positions, loss_mask)
  return sharded_step


def _stack(trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def init_state(config: pretrain_config_lib.PretrainConfig, optimizer) -> dict[str, Any]:
  """A fresh state; its parameters are those of `config.init_checkpoint` when it is set. For an
  ensemble, the members' states stacked on a leading axis."""
  if config.ensemble_members:
    return _stack([init_state(config.member(k), optimizer)
                   for k in range(config.ensemble_members)])
  key, init_key = jax.random.split(jax.random.key(config.seed))
  if config.init_checkpoint:
    params, gpt, saved = checkpoints.load_model(config.init_checkpoint)
    checkpoints.check_single(saved, f"init_checkpoint {config.init_checkpoint}")
    if gpt != config.model:
      raise checkpoints.CheckpointError(
          f"init_checkpoint {config.init_checkpoint} is a {gpt}, not the configured "
          f"{config.model}")
  else:
    params = model_lib.init_params(config.model, init_key)
  return dict(params=params, opt_state=optimizer.init(params), step=jnp.int32(0),
              key=jax.random.key_data(key))


def current_step(state: dict[str, Any]) -> int:
  """Steps done; the members of an ensemble move in step."""
  return int(np.asarray(state["step"]).reshape(-1)[0])


def make_members_step(gpt: model_lib.GPTConfig, optimizer: optax.GradientTransformation):
  """`make_train_step` over the K members of an ensemble: states and batches stacked [K, ...];
  the loss returned is the members' mean (finite only when every member's is)."""
  step = jax.vmap(make_train_step(gpt, optimizer))

  def members_step(state, tokens, positions, loss_mask):
    state, loss = step(state, tokens, positions, loss_mask)
    return state, jnp.mean(loss)
  return jax.jit(members_step)


def make_members_batch(config: pretrain_config_lib.PretrainConfig, step: int):
  """The K members' batches of `step`, stacked: tokens, positions, loss_mask [K, B, L]."""
  batches = [make_batch(config.member(k), step) for k in range(config.ensemble_members)]
  return tuple(np.stack(parts) for parts in zip(*batches))


def member_params(params, k: int):
  """Member k's parameters from an ensemble's stacked ones."""
  return jax.tree_util.tree_map(lambda x: x[k], params)


def progress_report(params, gpt: model_lib.GPTConfig,
                    config: pretrain_config_lib.PretrainConfig) -> str:
  """Greedy accuracy at N and N + 1 digits (varying suite), for progress lines; one line per
  member of an ensemble."""
  if config.ensemble_members:
    return "\n".join(f"  member {k}:" + progress_report(member_params(params, k), gpt,
                                                         config.member(k))[1:]
                     for k in range(config.ensemble_members))
  n = config.pretrain_max_digits
  results = [evaluation.evaluate_suite(params, gpt, d, "varying", config.eval_num_examples,
                                       seed=config.seed) for d in (n, n + 1)]
  return "  greedy accuracy (varying): " + ", ".join(
      f"{r['digits']} digits {100 * r['accuracy']:.1f}%" for r in results)


def train(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False,
          log=functools.partial(print, flush=True), resume_previous: bool = False
          ) -> dict[str, Any]:
  """Pre-trains, checkpointing to `workdir/checkpoints`; resumes from the latest checkpoint.

  With `config.sharding`, runs on a device mesh (see `sharding`); only the main process logs.
  `resume_previous`: when the latest checkpoint is damaged, resume from the one before.

  Returns the final state dict (on the mesh when there is one).

  Raises:
    ValueError: on a bad config, e.g. a batch size the data axis does not divide.
    checkpoints.CheckpointError: when the latest checkpoint is damaged (see `resume_previous`).
    divergence.DivergenceError: at the first step whose loss is not finite; no checkpoint is
      written after the last finite step.
  """
  saved = saved_config(config)
  return _train(pretrain_config_lib.PretrainConfig.from_config_dict(config), saved, workdir,
                overwrite, log, resume_previous)


def _train(config: pretrain_config_lib.PretrainConfig, saved: dict, workdir: str,
           overwrite: bool, log, resume_previous: bool) -> dict[str, Any]:
  """`train` on the typed config; `saved` is written beside the checkpoints."""
  mesh = sharding.mesh_from_shape(*config.mesh_shape)
  if mesh is not None:
    sharding.check_batch(config.batch_size, mesh)
  if not distributed.is_main():
    log = lambda *_: None
  gpt = config.model
  optimizer = make_optimizer(config)
  mngr = checkpoints.manager(checkpoints.prepare_workdir(workdir, overwrite))
  state = init_state(config, optimizer)
  if mesh is not None:
    # Placed before restoring, so that Orbax restores each process's shards onto the mesh.
    state = sharding.place_state(state, mesh)
  restored = checkpoints.restore_latest(mngr, state, saved, resume_previous, log)
  if restored is not None:
    state = restored
    log(f"resumed from step {current_step(state)} in {mngr.directory}")
  members = config.ensemble_members
  count = model_lib.num_params(state["params"]) // max(members, 1)
  log(f"model: {count:,} parameters{f' × {members} members' if members else ''}, {gpt}")
  if members:
    train_step = make_members_step(gpt, optimizer)
    batch = functools.partial(make_members_batch, config)
  elif mesh is None:
    train_step = make_train_step(gpt, optimizer)
    batch = functools.partial(make_batch, config)
  else:
    train_step = make_train_step(gpt, optimizer, state, mesh)
    rows = sharding.process_rows(config.batch_size, mesh)
    batch = lambda step: sharding.global_batch(mesh, make_batch(config, step, rows),
                                               config.batch_size)
  start = current_step(state)
  t0, losses = time.time(), []  # losses: (step, loss) since the last log line
  for step in range(start, config.num_steps):
    state, loss = train_step(state, *batch(step))
    losses.append((step + 1, loss))
    done = step + 1
    save = done % config.checkpoint_every == 0 or done == config.num_steps
    if save or done % config.log_every == 0:
      # Checked where the loop waits for the device anyway; before any save.
      bad = divergence.first_non_finite(losses)
      if bad is not None:
        raise divergence.DivergenceError(
            f"step {bad[0]}: the pre-training loss is {bad[1]}; stopped, nothing saved after "
            f"step {mngr.latest_step()} (in {mngr.directory})")
    if done % config.log_every == 0 or done == config.num_steps:
      rate = (done - start) / (time.time() - t0)
      eta = (config.num_steps - done) / rate
      log(f"step {done}/{config.num_steps}  loss {np.mean([float(l) for _, l in losses]):.4f}  "
          f"{rate:.2f} steps/s  ETA {eta / 60:.1f} min")
      losses = []
    if save:
      checkpoints.save(mngr, done, state, saved)
    if config.eval_every and done % config.eval_every == 0 and done < config.num_steps:
      params = distributed.host_local(state["params"])  # a collective: every process calls it
      if distributed.is_main():
        log(progress_report(params, gpt, config))
  mngr.close()
  return state
