"""The tempered softmax π = softmax(logits / τ) that the losses, the certainty Ĵ and the token
weights share, and the checks of their arguments.

The checks raise on bad concrete values only: traced values (under jit, or vmapped over a
hyper-parameter sweep) cannot be inspected and pass unchecked, so that sweeps stay vmappable.
"""
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
  """Raises ValueError naming the valid `choices` unless `value` is one of them."""
  if value not in choices:
    raise ValueError(f"Unknown {kind} {value!r}; valid names: {', '.join(choices)}.")


def check_concrete(value: Any, ok: Callable[[np.ndarray], Any], message: str) -> None:
  """Raises ValueError(message) if `value` is a concrete number for which `ok` fails.

  Traced values (under jit, or vmapped over a hyper-parameter sweep) cannot be inspected and
  pass unchecked.
  """
  concrete = isinstance(value, (numbers.Real, np.ndarray, np.generic))
  if concrete and not np.all(ok(np.asarray(value))):
    raise ValueError(f"{message}, got {value!r}.")


def log_softmax(logits: jnp.ndarray, temperature: float) -> jnp.ndarray:
  """log softmax(logits / temperature) over the last axis; same shape as `logits` [..., V]."""
  check_concrete(temperature, lambda t: t > 0, "temperature must be > 0")
  return jax.nn.log_softmax(jnp.asarray(logits) / temperature, axis=-1)


def entropy(log_probs: jnp.ndarray) -> jnp.ndarray:
  """Shannon entropy over the last axis of normalised log-probabilities [..., V] → [...]."""
  return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
