"""Accuracy with bootstrap confidence intervals (SPEC §3), on the jitted KV-cache rollout."""
import jax
import numpy as np

from critical_kl import arithmetic
from critical_kl import model as model_lib
from critical_kl import sampling
from critical_kl import tokenizer

MODES = ("identical", "varying")


def bootstrap_ci(successes, num_resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of `successes` [n]."""
  x = np.asarray(successes, np.float64)
  if x.size == 0:
    raise ValueError("bootstrap_ci needs at least one value")
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, x.size, size=(num_resamples, x.size))].mean(axis=1)
  tail = (1.0 - level) / 2.0
  return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def solve(params, gpt: model_lib.GPTConfig, operands: np.ndarray, key: jax.Array, *,
          greedy: bool = True, temperature: float = 1.0, batch_size: int = 256,
          max_digits: int | None = None,
          vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT) -> tuple[np.ndarray, list[str]]:
  """Generates a completion for every problem of operands [n, 2].

  Problems go through in batches of `batch_size`, all padded to the same prompt length, so one
  compilation serves the whole set; `vocabulary` is the model's. Returns (solved bool [n],
  completions).
  """
  operands = np.asarray(operands)
  if max_digits is None:
    max_digits = len(str(int(operands.max())))
  largest = 10 ** max_digits - 1
  prompt_length = len(arithmetic.prompt(largest, largest))
  solved, texts = [], []
  for start in range(0, len(operands), batch_size):
    chunk = operands[start:start + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
    problems = sampling.encode_problems(padded, prompt_length, vocabulary)
    key, sub = jax.random.split(key)
    traj = sampling.rollout(params, gpt, problems, sub, max_new_tokens=arithmetic.max_episode_length(max_digits),
                            temperature=temperature, greedy=greedy, vocabulary=vocabulary)
    solved.append(np.asarray(traj.solved)[:len(chunk)])
    texts.extend(sampling.completions(traj, vocabulary)[:len(chunk)])
  return np.concatenate(solved), texts


def evaluate_suite(params, gpt: model_lib.GPTConfig, digits: int, mode: str, num_examples: int,
                   *, seed: int = 0, greedy: bool = True, temperature: float = 1.0,
                   batch_size: int = 256,
                   vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT) -> dict:
  """Accuracy on `num_examples` problems of one suite, with its 95% bootstrap interval."""
  rng = np.random.default_rng([seed, digits, MODES.index(mode)])
  operands = arithmetic.sample_suite(rng, mode, num_examples, digits)
  solved, _ = solve(params, gpt, operands, jax.random.key(seed), greedy=greedy,
                    temperature=temperature, batch_size=min(batch_size, num_examples),
                    max_digits=digits, vocabulary=vocabulary)
  return dict(digits=digits, mode=mode, num_examples=int(num_examples),
              accuracy=float(solved.mean()), ci95=list(bootstrap_ci(solved)))


def format_table(results: list[dict]) -> str:
  """A readable table: one row per number of digits, one column per mode."""
  modes = [m for m in MODES if any(r["mode"] == m for r in results)]
  lines = ["digits  " + "  ".join(f"{m:>24}" for m in modes)]
  for d in sorted({r["digits"] for r in results}):
    cells = []
    for m in modes:
      r = next((r for r in results if r["digits"] == d and r["mode"] == m), None)
      cells.append(f"{'-':>24}" if r is None else
                   f"{100 * r['accuracy']:6.1f}% [{100 * r['ci95'][0]:5.1f}, "
                   f"{100 * r['ci95'][1]:5.1f}]")
    lines.append(f"{d:>6}  " + "  ".join(cells))
  return "\n".join(lines)
