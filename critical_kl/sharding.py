"""Device mesh and shardings: data parallelism over the batch, FSDP over the parameters.

The mesh has two axes:
  * "data": the batch of problems (pre-training) or episodes (RL) is split along it;
  * "params": each large parameter, and its optimizer state, is split along one of its dimensions
    (FSDP style); XLA gathers what a computation needs. Size 1 means plain data parallelism.

The pre-train step and the RL iteration are the functions of `pretrain` and `rl`, jitted again with
explicit `in_shardings` / `out_shardings` (pjit semantics): the compiler propagates the shardings
through the model, the rollout and the update, so nothing in the model knows about the mesh.
Results equal those on one device up to the order of floating-point reductions.

Config: every pre-train and RL config has

  c.sharding = ml_collections.ConfigDict(dict(
      data=1,     # devices along "data"; 0: all devices // params
      params=1))  # devices along "params"; 1: data parallel only

data = params = 1 (the default), or no `sharding` field, means no mesh: one device, the plain
jitted functions. Anything else builds a mesh over every device of every process, e.g.
`--config.sharding.data=0` (all devices) or `--config.sharding.data=4 --config.sharding.params=2`.

Typical use:

  mesh = sharding.mesh_from_config(config)
  state = sharding.place_state(state, mesh)
  train_step = sharding.shard_pretrain_step(gpt, optimizer, state, mesh)

With several processes (see `distributed`) the mesh spans the devices of all of them; each process
builds only the rows of the batch its own devices hold (`process_rows`), and `global_batch`
assembles the global array from them.
"""
import math
from typing import Any

import jax
import ml_collections
import numpy as np
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
  """The mesh of `config.sharding` (see the module docstring), or None for one device."""
  if "sharding" not in config or (config.sharding.data, config.sharding.params) == (1, 1):
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
  return _put(tree, param_sharding(tree, mesh))


def _put(tree: Any, shardings: Any) -> Any:
  """`jax.device_put`; across processes, from host copies (every process holds the same values)."""
  if jax.process_count() > 1:
    # A single-device array of one process cannot be moved to another process's devices; each
    # process instead contributes its own shards of an identical host value.
    tree = jax.device_get(tree)
  return jax.device_put(tree, shardings)


def process_rows(batch_size: int, mesh: Mesh) -> np.ndarray:
  """int [B_local]: the rows of a [batch_size, ...] batch split along "data" that this process's
  devices hold, ascending; all rows with one process.

  Concatenated in this order they are the local data `global_batch` expects.
  """
  index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  return np.unique(np.concatenate([np.arange(batch_size)[index[0]]
                                   for index in index_map.values()]))


def global_batch(mesh: Mesh, local_arrays, batch_size: int) -> tuple[jax.Array, ...]:
  """The global batch [batch_size, ...], split along "data", from this process's rows.

  Args:
    mesh: from `make_mesh`.
    local_arrays: numpy arrays [B_local, ...], the rows `process_rows(batch_size, mesh)` of the
      batch (the whole batch with one process).
    batch_size: the global batch size B.
  """
  check_batch(batch_size, mesh)
  sharding = batch_sharding(mesh)
  return tuple(jax.make_array_from_process_local_data(sharding, x, (batch_size,) + x.shape[1:])
               for x in local_arrays)


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
    iteration(state, arm, batch, ref_params) → (state, metrics), as `rl.make_iteration`, with
    the episodes split along "data" and the parameters and optimizer state FSDP-sharded; B must
    be divisible by the data axis.
  """
  state_shardings = param_sharding(state, mesh)
  step = jax.jit(rl.make_iteration(gpt, config, task),
                 in_shardings=(state_shardings, replicated(mesh), batch_sharding(mesh),
                               param_sharding(state.params, mesh)),
                 out_shardings=(state_shardings, replicated(mesh)))

  def iteration(state, arm, batch, ref_params):
    check_batch(batch.problems.prompts.shape[0], mesh)
    return step(state, arm, batch, ref_params)
  return iteration


def _runs_spec(shape: tuple[int, ...], split_runs: bool, params_size: int) -> P:
  """A leaf [R, ...] of stacked runs: the runs along "data" (or replicated), each run's leaf
  FSDP-split as `param_sharding` splits an unstacked one."""
  return P(DATA if split_runs else None,
           *_fsdp_spec(shape[1:], params_size, MIN_SHARDED_SIZE))


def runs_split(num_runs: int, episodes: int, mesh: Mesh) -> int:
  """Which axis of the stacked runs the "data" axis splits: 0 (runs) when the runs divide evenly,
  else 1 (the episodes of each run).

  Raises:
    ValueError: when neither divides evenly.
  """
  data = mesh.shape[DATA]
  if num_runs % data == 0:
    return 0
  if episodes % data == 0:
    return 1
  raise ValueError(f"neither the {num_runs} runs nor the {episodes} episodes per collect are "
                   f"divisible by the {data} devices of the data axis")


def runs_shardings(mesh: Mesh, state: rl.RLState, num_runs: int, episodes: int):
  """Shardings of the vmapped runs iteration's arguments.

  Returns:
    (state, per-run arrays [R] (the `arms.RunArms`), per-episode arrays [R, B, ...]) shardings. Split over runs, each device
    advances whole runs; split over episodes, every device holds every run and its share of each
    run's episodes. Parameters and optimizer state are FSDP-split along "params" either way.
  """
  axis = runs_split(num_runs, episodes, mesh)
  params_size = mesh.shape[PARAMS]

  state_shardings = jax.tree_util.tree_map(
      lambda x: NamedSharding(mesh, _runs_spec(tuple(x.shape), axis == 0, params_size)), state)
  per_run = NamedSharding(mesh, P(DATA) if axis == 0 else P())
  episodes_sharding = NamedSharding(mesh, P(DATA) if axis == 0 else P(None, DATA))
  return state_shardings, per_run, episodes_sharding


def place_runs(state: rl.RLState, mesh: Mesh, episodes: int) -> rl.RLState:
  """Puts the stacked runs' state on the mesh with the shardings of `shard_runs_iteration`."""
  num_runs = jax.tree_util.tree_leaves(state)[0].shape[0]
  return _put(state, runs_shardings(mesh, state, num_runs, episodes)[0])


def shard_runs_iteration(gpt: model_lib.GPTConfig, config: ml_collections.ConfigDict,
                         task: rl.Task, state: rl.RLState, mesh: Mesh):
  """`rl.make_runs_iteration` (all runs vmapped) on the mesh.

  Args:
    gpt, config, task: as for `rl.make_runs_iteration`.
    state: the stacked runs' `RLState` (or its `jax.eval_shape`), for the shardings; pass the state
      through `place_runs` and the reference parameters through `place_state` first.
    mesh: from `make_mesh`.

  Returns:
    iteration(state, arm (`arms.RunArms` [R]), batch (`rl.Batch` [R, B, ...]), ref_params) →
    (state, metrics [R] each, replicated), with "data" over the runs when R divides evenly, else
    over the episodes (`runs_split`); host numpy arguments are placed here.

  Raises:
    ValueError: when neither R nor B divides evenly over the data axis.
  """
  num_runs = jax.tree_util.tree_leaves(state)[0].shape[0]
  state_shardings, per_run, per_episode = runs_shardings(mesh, state, num_runs,
                                                         config.episodes_per_collect)
  params = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                                  state.params)
  vmapped = rl.vmap_runs(lambda axis_name: rl.make_iteration(gpt, config, task, axis_name),
                         in_axes=(0, 0, 0, None))
  step = jax.jit(vmapped,
                 in_shardings=(state_shardings, per_run, per_episode,
                               param_sharding(params, mesh)),
                 out_shardings=(state_shardings, replicated(mesh)))

  def place(x, sharding):
    # Every process holds the whole host batch; each contributes the shards of its devices.
    if isinstance(x, jax.Array) and (x.sharding == sharding or not x.is_fully_addressable):
      return x
    return jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x))

  def iteration(state, arm, batch, ref_params):
    arm = jax.tree_util.tree_map(lambda x: place(x, per_run), arm)
    batch = jax.tree_util.tree_map(lambda x: place(x, per_episode), batch)
    return step(state, arm, batch, ref_params)
  return iteration
