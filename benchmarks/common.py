"""What every benchmark shares: timing, this machine's matmul peak, the task, tables and JSON."""
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections

from critical_kl import tokenizer
from critical_kl.configs import pretrain_default

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timeit(fn, reps: int):
  """Best wall time in seconds of `reps` calls of `fn()`, after one untimed call that compiles,
  and the last call's result.

  The best rather than the mean, because other processes on the machine only ever add time.
  """
  out = jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times), out


def time_compiled(jitted, args: tuple, reps: int):
  """Best wall time in seconds of `reps` calls of `jitted(*args)`, and the last call's result.

  Unlike `timeit`, it compiles ahead of time instead of making an untimed call: one RL iteration of
  the 85M model takes about a minute on 2 CPU cores.
  """
  compiled = jitted.lower(*args).compile()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return min(times), out


def measure_matmul_peak(size: int = 2048, reps: int = 5, dtype: str = "float32") -> float:
  """GFLOP/s of a jitted [size, size] @ [size, size] matmul in `dtype`: this device's dense peak
  (at JAX's default matmul precision, the one the model's matmuls run at)."""
  a, b = jax.random.normal(jax.random.key(0), (2, size, size), jnp.float32).astype(dtype)
  dot = jax.jit(jnp.dot)
  return 2 * size**3 / timeit(lambda: dot(a, b), reps)[0] / 1e9


def task_config(model_fields: dict, batch_size: int) -> ml_collections.ConfigDict:
  """The default pre-training config with another architecture and batch size."""
  config = pretrain_default.get_config()
  config.model.update(model_fields)
  config.batch_size = batch_size
  return config


def never_pad(params, margin: float = 100.0):
  """Random GPT parameters that never sample the padding token, so every episode runs to its limit.

  An untrained model emits the padding token (1 of 41) at random, which would end most episodes
  after a few dozen tokens instead of running to their limit. Feature 0 of the final hidden state
  is pinned to 1, and through the tied embedding only PAD reads it, with weight -margin: PAD's
  logit drops by `margin`, every other logit loses only that one feature's share.
  """
  ln_f = dict(scale=params["ln_f"]["scale"].at[0].set(0.0),
              bias=params["ln_f"]["bias"].at[0].set(1.0))
  wte = params["wte"]["embedding"].at[:, 0].set(0.0).at[tokenizer.PAD_ID, 0].set(-margin)
  return dict(params, ln_f=ln_f, wte=dict(embedding=wte))


def _cell(fmt: str, figures: dict) -> str:
  try:
    return fmt.format(**figures)
  except TypeError:  # None: the measurement was skipped
    return "skipped"


def table(rows, results: dict[str, dict]) -> list[str]:
  """One column per model of `results`; `rows` holds (label, format) pairs."""
  lines = [f"{'':30}" + "".join(f"{name:>16}" for name in results)]
  for label, fmt in rows:
    lines.append(f"{label:30}" + "".join(f"{_cell(fmt, f):>16}" for f in results.values()))
  return lines


def met(value: float, target: float) -> str:
  return "met" if value >= target else "not met"


def device_figures() -> dict:
  """The device and core count that every figure of a run was measured on."""
  return dict(device=jax.devices()[0].device_kind, cpu_count=os.cpu_count())


def write_json(figures: dict, path: str | None) -> None:
  """Prints `figures` as the run's final line, one JSON object; also writes them to `path`."""
  if path:
    with open(path, "w") as f:
      json.dump(figures, f, indent=2)
  print(json.dumps(figures), flush=True)
