"""How a model does on the task: accuracy with bootstrap confidence intervals (SPEC §3), on the
jitted KV-cache rollout, and the one teacher-forced scorer (`teacher_forced_scores`: log-probs and
certainty along given tokens) that the reference pass of RL, the critical-token probability and the
critical-token analysis (`critical_tokens`) are built on. Stacked RL runs are evaluated by
`runs_evaluation`.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from critical_kl import arithmetic
from critical_kl import certainty as certainty_lib
from critical_kl import losses
from critical_kl import model as model_lib
from critical_kl import sampling
from critical_kl import task as task_lib
from critical_kl import tokenizer
from critical_kl import trajectory as trajectory_lib

MODES = ("identical", "varying")


class TeacherScores(NamedTuple):
  """A model's predictions along given tokens [B, T]; entry t is about token t given tokens[:t]
  (entry 0 has no prefix and is meaningless).

  Attributes:
    logits: [B, T, V], aligned to the tokens (`trajectory.align_to_tokens`).
    logp: [B, T], log π(token t | prefix) at the scorer's temperature.
    certainty: [B, T], Ĵ of the prediction (`certainty.certainty`); None when not asked for.
  """
  logits: jnp.ndarray
  logp: jnp.ndarray
  certainty: jnp.ndarray


def teacher_forced_scores(params, gpt: model_lib.GPTConfig, tokens, *, temperature: float = 1.0,
                          certainty_method: str | None = None,
                          certainty_temperature: float = 1.0, ensemble: bool = False,
                          epistemic: bool = False) -> TeacherScores:
  """One teacher-forced pass over tokens int32 [B, T]: logits, log-probs at `temperature` and,
  with a `certainty_method`, Ĵ at `certainty_temperature`. Pure; jit it with its caller.

  With `ensemble`, `params` are K members stacked on a leading axis: the logits are those of the
  members' mixture at `temperature` (`certainty.ensemble_logits`) and Ĵ the mixture's at
  `certainty_temperature` (`certainty.ensemble_certainty`, minus the members' disagreement with
  `epistemic`)."""
  if not ensemble:
    logits = trajectory_lib.align_to_tokens(model_lib.forward(params, gpt, tokens).logits)
    certainty = (None if certainty_method is None else
                 certainty_lib.certainty(logits, certainty_method, certainty_temperature))
  else:
    members = jax.vmap(lambda p: trajectory_lib.align_to_tokens(
        model_lib.forward(p, gpt, tokens).logits))(params)  # [K, B, T, V]
    logits = certainty_lib.ensemble_logits(members, temperature)
    certainty = (None if certainty_method is None else certainty_lib.ensemble_certainty(
        members, certainty_method, certainty_temperature, epistemic))
  logp, _ = losses.token_logp_and_entropy(logits, tokens, temperature)
  return TeacherScores(logits, logp, certainty)


def critical_probability(params, gpt: model_lib.GPTConfig, tokens, critical) -> jnp.ndarray:
  """Mean π(correct token | correct prefix) over the critical tokens, at temperature 1 (SPEC §6,
  the paper's Figures 4 and 7): tokens [B, T] a `task.TeacherSet`'s, critical float [B, T]."""
  logp = teacher_forced_scores(params, gpt, tokens).logp
  return losses.masked_mean(jnp.exp(logp), critical)


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
    problems = task_lib.encode_problems(padded, prompt_length, vocabulary)
    key, sub = jax.random.split(key)
    traj = sampling.rollout(params, gpt, problems, sub, rules=task_lib.episode_rules(vocabulary),
                            max_new_tokens=arithmetic.max_episode_length(max_digits),
                            temperature=temperature, greedy=greedy)
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
