"""Device mesh and shardings: data parallelism over the batch, FSDP over the parameters.

The mesh has two axes:
  * "data": the batch of problems (pre-training) or episodes (RL) is split along it;
  * "params": each large parameter, and its optimizer state, is split along one of its dimensions
    (FSDP style); XLA gathers what a computation needs. Size 1 means plain data parallelism.

The pre-train step and the RL iteration are the functions of `pretrain` and `rl`, jitted again with
explicit `in_shardings` / `out_shardings` (pjit semantics): the compiler propagates the shardings
through the model, the rollout and the update, so nothing in the model knows about the mesh.
Results equal those on one device up to the order of floating-point reductions.

Config (optional; absent means no sharding), for the lead to add to a pre-train or RL config:

  c.sharding = ml_collections.ConfigDict(dict(
      data=0,     # devices along "data"; 0: all devices // params
      params=1))  # devices along "params"; 1: data parallel only

Typical use:

  mesh = sharding.mesh_from_config(config)
  state = sharding.place_state(state, mesh)
  train_step = sharding.shard_pretrain_step(gpt, optimizer, state, mesh)
"""
import math
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from critical_kl import model as model_lib
from critical_kl import pretrain
from critical_kl import rl

DATA = "data"
PARAMS = "params"
# Arrays with fewer elements stay replicated: gathering them costs more than storing them.
MIN_SHARDED_SIZE = 1024


def make_mesh(data: int | None = None, params: int = 1, devices=None) -> Mesh:
  """A (data, params) mesh over all of `devices` (default: every device).

  Raises:
    ValueError: when data × params is not the number of devices.
  """
  devices = jax.devices() if devices is None else list(devices)
  if data is None:
    data = len(devices) // params
  if data < 1 or params < 1 or data * params != len(devices):
    raise ValueError(f"a mesh of {data} (data) × {params} (params) devices does not match the "
                     f"{len(devices)} available devices")
  # Auto axes: shardings propagate through the computation (jax.make_mesh defaults to Explicit).
  return jax.make_mesh((data, params), (DATA, PARAMS), axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=devices)


def mesh_from_config(config: ml_collections.ConfigDict) -> Mesh | None:
  """The mesh of `config.sharding` (see the module docstring), or None when it has none."""
  if "sharding" not in config:
    return None
  return make_mesh(config.sharding.data or None, config.sharding.params)


def _fsdp_spec(shape: tuple[int, ...], params_size: int, min_size: int) -> P:
  """Splits the largest dimension divisible by the params axis; replicates small arrays."""
  if params_size == 1 or math.prod(shape) < min_size:
    return P()
  divisible = [i for i, n in enumerate(shape) if n % params_size == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda i: shape[i])
  return P(*(PARAMS if i == axis else None for i in range(len(shape))))


def param_sharding(tree: Any, mesh: Mesh, min_size: int = MIN_SHARDED_SIZE) -> Any:
  """FSDP shardings of a pytree of arrays (or `jax.ShapeDtypeStruct`s) with `.shape`.

  Works on parameters, optimizer state or a whole training state: each leaf is sharded by its
  shape alone, so Adam's moments are split like the parameters they follow, and scalars (step
  counts) and PRNG key data are replicated.
  """
  params_size = mesh.shape[PARAMS]
  return jax.tree_util.tree_map(
      lambda x: NamedSharding(mesh, _fsdp_spec(tuple(x.shape), params_size, min_size)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits an array's leading (batch) dimension along "data"; other dimensions are replicated."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch(batch_size: int, mesh: Mesh) -> None:
  """Raises ValueError unless the batch splits evenly over the data axis."""
  data = mesh.shape[DATA]
  if batch_size % data:
    raise ValueError(f"batch size {batch_size} is not divisible by the {data} devices of the "
                     f"data axis")


def place_state(tree: Any, mesh: Mesh) -> Any:
  """Puts parameters or a training state on the mesh with the shardings of `param_sharding`."""
  return jax.device_put(tree, param_sharding(tree, mesh))


def shard_pretrain_step(gpt: model_lib.GPTConfig, optimizer, state: dict[str, Any], mesh: Mesh):
  """`pretrain.make_train_step` on the mesh: step(state, tokens, positions, loss_mask).

  Args:
    gpt: the model config.
    optimizer: from `pretrain.make_optimizer`.
    state: the training state (or its `jax.eval_shape`), for the shardings; pass the state itself
      through `place_state` before the first step.
    mesh: from `make_mesh`.

  Returns:
    A function of (state, tokens [B, L], positions [B, L], loss_mask [B, L]) → (state, loss) with
    the batch split along "data" and the state FSDP-sharded; B must be divisible by the data axis.
  """
  state_shardings = param_sharding(state, mesh)
  batch = batch_sharding(mesh)
  # The jitted step is traced into this jit: only the shardings at its boundary are new.
  step = jax.jit(pretrain.make_train_step(gpt, optimizer),
                 in_shardings=(state_shardings, batch, batch, batch),
                 out_shardings=(state_shardings, replicated(mesh)))

  def train_step(state, tokens, positions, loss_mask):
    check_batch(tokens.shape[0], mesh)
    return step(state, tokens, positions, loss_mask)
  return train_step


def shard_rl_iteration(gpt: model_lib.GPTConfig, config: ml_collections.ConfigDict, task: rl.Task,
                       state: rl.RLState, mesh: Mesh):
  """`rl.make_iteration` (one run) on the mesh.

  Args:
    gpt, config, task: as for `rl.make_iteration`.
    state: the run's `RLState` (or its `jax.eval_shape`), for the shardings; pass the state and
      the reference parameters through `place_state` before the first iteration.
    mesh: from `make_mesh`.

  Returns:
    iteration(state, beta, problems [B, P], critical [B, T], ref_params) → (state, metrics), with
    the episodes split along "data" and the parameters and optimizer state FSDP-sharded; B must
    be divisible by the data axis.
  """
  state_shardings = param_sharding(state, mesh)
  batch = batch_sharding(mesh)
  step = jax.jit(rl.make_iteration(gpt, config, task),
                 in_shardings=(state_shardings, replicated(mesh), batch, batch,
                               param_sharding(state.params, mesh)),
                 out_shardings=(state_shardings, replicated(mesh)))

  def iteration(state, beta, problems, critical, ref_params):
    check_batch(problems.prompts.shape[0], mesh)
    return step(state, beta, problems, critical, ref_params)
  return iteration
