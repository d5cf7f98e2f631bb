"""Non-finite training quantities: found at the first step they appear, never checkpointed.

The loops check their losses (and metrics) at every log or checkpoint boundary, where they already
wait for the device, and `checkpoints.save` refuses a state with a NaN or an infinity, so the last
checkpoint on disk is always a finite one a run can resume from.
"""
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class DivergenceError(ValueError):
  """A training quantity became NaN or infinite."""


def first_non_finite(values: Iterable[tuple[Any, Any]]) -> tuple[Any, float] | None:
  """The first (label, value) pair whose value is not finite, or None.

  Args:
    values: (label, scalar) pairs in training order, e.g. (step, loss); scalars may be on device.
  """
  for label, value in values:
    value = float(value)
    if not np.isfinite(value):
      return label, value
  return None


def all_finite(tree: Any) -> bool:
  """Whether every floating-point leaf of `tree` is finite (integer leaves are skipped)."""
  leaves = [x for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return bool(jax.jit(lambda xs: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])))(
      leaves)) if leaves else True
