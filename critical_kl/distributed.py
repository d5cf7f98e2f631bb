"""Several processes (hosts) in one run: start-up, the main process, barriers, gathering.

Every process runs the same program on its own devices (JAX's multi-controller model): it builds
the same configs, initial states and host-side problems, and takes part in every jitted step and
every checkpoint save with the same global arrays. Only the main process (index 0) prints and
writes side files (metrics, summaries, plots); Orbax coordinates the checkpoint writes itself.

With one process (the default, no `initialize` call) every function here is a no-op or the
identity, so single-host runs are unchanged.
"""
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """`jax.distributed.initialize`; must run before any other JAX call.

  On TPU VMs, SLURM and Open MPI every argument may be None: JAX detects them. Elsewhere (several
  GPU hosts started by hand) give all three: the same `coordinator_address` ("host:port" of
  process 0) and `num_processes` everywhere, and each process its own `process_id`.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def is_main() -> bool:
  """True in the process that prints and writes side files (process 0)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches the barrier `name`; nothing to wait for with one process."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def host_local(tree: Any) -> Any:
  """The arrays of `tree`, usable by this process alone.

  Arrays spread over several processes are gathered into numpy arrays (a collective: every process
  must call it at the same point); arrays this process holds entirely are returned as they are,
  so that single-host code keeps their shardings.
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  spread = [i for i, x in enumerate(leaves)
            if isinstance(x, jax.Array) and not x.is_fully_addressable]
  if spread:
    # One collective for the whole tree rather than one per leaf.
    gathered = multihost_utils.process_allgather([leaves[i] for i in spread], tiled=True)
    for i, x in zip(spread, gathered):
      leaves[i] = np.asarray(x)
  return jax.tree_util.tree_unflatten(treedef, leaves)
