"""Many RL runs at once: one program vmapped over a leading runs axis, on one device or a mesh.

A run is one seed of one arm (`rl`, `arms`). Its state, arms and problems are stacked along a new
leading axis (`stack`), and every run advances through the same compiled iteration
(`make_runs_iteration`); `runs_evaluation` evaluates them with the same compiled rollouts. The
axis is named (`vmap_runs`), so that rollouts inside stop when every run has finished instead of
selecting per step.
"""
import jax
import jax.numpy as jnp

from critical_kl import model as model_lib
from critical_kl import rl
from critical_kl import rl_config as rl_config_lib
from critical_kl import sharding
from critical_kl import task as task_lib

RUNS_AXIS = "runs"


def stack(items):
  """Stacks a list of pytrees along a new leading (run) axis."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *items)


def vmap_runs(make, in_axes):
  """jax.vmap over runs of `make(axis_name)`, naming the axis so that rollouts inside stop when
  every run has finished (`sampling.rollout`'s `axis_name`) instead of selecting per step."""
  return jax.vmap(make(RUNS_AXIS), in_axes=in_axes, axis_name=RUNS_AXIS)


def make_runs_iteration(gpt: model_lib.GPTConfig, config: rl_config_lib.RLConfig,
                        task: task_lib.Task, state: rl.RLState | None = None,
                        mesh: jax.sharding.Mesh | None = None):
  """`rl.make_iteration` vmapped over runs and jitted, on one device or on a mesh.

  Args:
    gpt, config, task: as for `rl.make_iteration`.
    state: the stacked runs' `RLState` [R, ...] (or its `jax.eval_shape`), for the shardings;
      needed with a mesh only. Pass the state through `sharding.place_runs` and the reference
      parameters through `sharding.place_state` first.
    mesh: from `sharding.make_mesh`, or None for one device.

  Returns:
    iteration(state, arm (`arms.RunArms` [R]), batch (`task.Batch` [R, B, ...]), ref_params) →
    (state, metrics [R] each); the reference parameters are shared by all runs. On a mesh the
    metrics are replicated, "data" splits the runs when R divides evenly, else the episodes
    (`sharding.runs_split`), and host numpy arguments are placed here.

  Raises:
    ValueError: on a mesh, when neither R nor B divides evenly over the data axis.
  """
  make = lambda axis_name: rl.make_iteration(gpt, config, task, axis_name)
  vmapped = vmap_runs(make, in_axes=(0, 0, 0, None))
  if mesh is None:
    return jax.jit(vmapped)
  if state is None:
    raise ValueError("an iteration on a mesh needs the state (or its jax.eval_shape) for the "
                     "shardings")
  state_shardings, per_run, per_episode = sharding.runs_shardings(mesh, state,
                                                                  config.episodes_per_collect)
  # The reference parameters are one run's: the stacked parameters without the runs axis.
  params = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                                  state.params)
  step = jax.jit(vmapped,
                 in_shardings=(state_shardings, per_run, per_episode,
                               sharding.param_sharding(params, mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)))

  def sharded_iteration(state, arm, batch, ref_params):
    # Every process holds the whole host batch; each contributes the shards of its devices.
    arm = sharding.place_host_copies(arm, per_run)
    batch = sharding.place_host_copies(batch, per_episode)
    return step(state, arm, batch, ref_params)
  return sharded_iteration
