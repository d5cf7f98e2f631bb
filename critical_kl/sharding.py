"""Device mesh and shardings: data parallelism over the batch, FSDP over the parameters.

The mesh has two axes:
  * "data": the batch of problems (pre-training) or episodes (RL) is split along it;
  * "params": each large parameter, and its optimizer state, is split along one of its dimensions
    (FSDP style); XLA gathers what a computation needs. Size 1 means plain data parallelism.

This module holds the primitives only: the mesh, the shardings of parameters, batches and stacked
runs, placement, and each process's rows. The trainers jit their own steps with explicit
`in_shardings` / `out_shardings` built from them (pjit semantics: `pretrain.make_train_step`,
`rl.jit_iteration`, `runs.make_runs_iteration`, each with `mesh=None` for one device); the
compiler propagates the shardings through the model, the rollout and the update, so nothing in
the model knows about the mesh. Results equal those on one device up to the order of
floating-point reductions.

Config: every pre-train and RL config has

  c.sharding = ml_collections.ConfigDict(dict(
      data=1,     # devices along "data"; 0: all devices // params
      params=1))  # devices along "params"; 1: data parallel only

data = params = 1 (the default), or no `sharding` field, means no mesh: one device, the plain
jitted functions. The typed configs (`rl_config.RLConfig`, `pretrain_config.PretrainConfig`) hold
it as `mesh_shape`; `mesh_from_shape` turns it into the mesh. Anything else builds a mesh over every device of every process, e.g.
`--config.sharding.data=0` (all devices) or `--config.sharding.data=4 --config.sharding.params=2`.

Typical use (with mesh None, skip the placement: the builders return plain `jax.jit`s):

  mesh = sharding.mesh_from_shape(*config.mesh_shape)  # a typed config (`rl_config`, ...)
  state = sharding.place_state(state, mesh)                          # pre-training
  train_step = pretrain.make_train_step(gpt, optimizer, state, mesh)

  state = sharding.place_runs(state, mesh, config.episodes_per_collect)  # stacked RL runs
  ref_params = sharding.place_state(ref_params, mesh)
  iteration = runs.make_runs_iteration(gpt, config, task, state, mesh)

With several processes (see `distributed`) the mesh spans the devices of all of them; each process
builds only the rows of the batch its own devices hold (`process_rows`), and `global_batch`
assembles the global array from them.
"""
import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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


def mesh_from_shape(data: int, params: int) -> Mesh | None:
  """The mesh of data × params devices (data 0: all devices // params), None for 1 × 1."""
  if (data, params) == (1, 1):
    return None
  return make_mesh(data or None, params)



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


def place_host_copies(tree: Any, sharding: NamedSharding) -> Any:
  """Global arrays of `tree` with `sharding`, from host values every process holds whole.

  Each process contributes the shards of its own devices. Arrays already on `sharding`, or
  spread over several processes, are returned as they are.
  """
  def place(x):
    if isinstance(x, jax.Array) and (x.sharding == sharding or not x.is_fully_addressable):
      return x
    return jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x))
  return jax.tree_util.tree_map(place, tree)


# Stacked runs: pytrees whose leaves are [R, ...], one slice per run (`runs.stack`).


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


def runs_shardings(mesh: Mesh, state: Any, episodes: int):
  """Shardings of the stacked runs and of their per-run and per-episode arguments.

  Args:
    mesh: from `make_mesh`.
    state: the runs' stacked state [R, ...] (or its `jax.eval_shape`).
    episodes: B, the episodes of each run per iteration.

  Returns:
    (state, per-run arrays [R, ...], per-episode arrays [R, B, ...]) shardings. Split over runs,
    each device advances whole runs; split over episodes, every device holds every run and its
    share of each run's episodes. Parameters and optimizer state are FSDP-split along "params"
    either way.

  Raises:
    ValueError: when neither R nor B divides evenly over the data axis (`runs_split`).
  """
  axis = runs_split(jax.tree_util.tree_leaves(state)[0].shape[0], episodes, mesh)
  params_size = mesh.shape[PARAMS]
  state_shardings = jax.tree_util.tree_map(
      lambda x: NamedSharding(mesh, _runs_spec(tuple(x.shape), axis == 0, params_size)), state)
  per_run = NamedSharding(mesh, P(DATA) if axis == 0 else P())
  per_episode = NamedSharding(mesh, P(DATA) if axis == 0 else P(None, DATA))
  return state_shardings, per_run, per_episode


def place_runs(state: Any, mesh: Mesh, episodes: int) -> Any:
  """Puts the stacked runs' state [R, ...] on the mesh with the shardings of `runs_shardings`."""
  return _put(state, runs_shardings(mesh, state, episodes)[0])
