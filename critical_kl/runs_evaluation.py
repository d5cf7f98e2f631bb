"""Evaluation of stacked RL runs: accuracy (greedy and sampled) and critical-token probability.

The figures are those of `evaluation` for one model, vmapped over the runs axis (`runs.vmap_runs`),
so every run is evaluated by the same compiled rollouts; `Evaluator` holds the fixed test problems
of an RL config and computes every figure, or the learning curves' (`CURVE_FIGURES`), of stacked
parameters [R, ...].
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from critical_kl import arithmetic
from critical_kl import evaluation
from critical_kl import model as model_lib
from critical_kl import rl_config as rl_config_lib
from critical_kl import runs as runs_lib
from critical_kl import sampling
from critical_kl import task as task_lib

# What the learning curves draw (the paper's Figures 4 and 7): the only figures computed at the
# evaluations during training; before and after RL every figure is.
CURVE_FIGURES = ("sampled_accuracy", "critical_probability")


def make_runs_accuracy(gpt: model_lib.GPTConfig, max_new_tokens: int, temperature: float,
                       greedy: bool, rules: task_lib.EpisodeRules = task_lib.RULES):
  """accuracy(params [R, ...], problems [B, P], key) → [R] share of problems solved."""
  def make(axis_name):
    def accuracy(params, problems, key):
      traj = sampling.rollout(params, gpt, problems, key, rules=rules,
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              greedy=greedy, axis_name=axis_name)
      return jnp.mean(traj.solved.astype(jnp.float32))
    return accuracy
  return jax.jit(runs_lib.vmap_runs(make, in_axes=(0, None, None)))


def make_runs_critical_probability(gpt: model_lib.GPTConfig):
  """probability(params [R, ...], `task.TeacherSet`) → [R] `evaluation.critical_probability`."""
  probability = lambda params, tokens, critical: evaluation.critical_probability(
      params, gpt, tokens, critical)
  vmapped = jax.jit(jax.vmap(probability, in_axes=(0, None, None)))
  return lambda params, s: vmapped(params, jnp.asarray(s.tokens), jnp.asarray(s.critical))


def eval_sets(config: rl_config_lib.RLConfig, task: task_lib.Task):
  """Fixed evaluation problems: N + k (the RL distribution) and in-distribution (1..N), and the
  teacher-forced set of the critical-token probability."""
  rng = np.random.default_rng([config.seed, 10**6])
  rl_ops = arithmetic.sample_rl(rng, config.eval_episodes, task.n_max, config.extra_digits)
  in_ops = arithmetic.sample_in_distribution(rng, config.eval_episodes, task.n_max)
  teacher_ops = arithmetic.sample_rl(rng, config.critical_eval_problems, task.n_max,
                                     config.extra_digits)
  return (task_lib.rl_batch(rl_ops, task).problems, task_lib.rl_batch(in_ops, task).problems,
          task_lib.teacher_set(teacher_ops, task.n_max, task.vocabulary))


def chunks(problems: task_lib.Problems, size: int) -> list[task_lib.Problems]:
  """`problems` cut into consecutive pieces of at most `size` problems."""
  count = problems.prompts.shape[0]
  return [jax.tree_util.tree_map(lambda x, i=i: x[i:i + size], problems)
          for i in range(0, count, size)]


class Evaluator:
  """Accuracy (greedy and sampled at τ) and critical-token probability of stacked parameters.

  The test problems are rolled out `config.eval_chunk` at a time (the KV cache of all runs × all
  problems may not fit in memory), chunk i > 0 with the key folded with i, so that a figure
  depends on the problems and the key alone, not on how many runs share the program.
  `__call__(params, label, log, names)` prints one line per figure with the time taken and an
  estimate of the time left, so that a long evaluation is not mistaken for a hang.
  """

  def __init__(self, gpt, config: rl_config_lib.RLConfig, task: task_lib.Task):
    rl_problems, in_problems, self.teacher = eval_sets(config, task)
    size = config.eval_chunk or config.eval_episodes
    self.rl_chunks, self.in_chunks = chunks(rl_problems, size), chunks(in_problems, size)
    self.key = jax.random.key(config.seed + 1)
    rules = task_lib.episode_rules(task.vocabulary)
    greedy = make_runs_accuracy(gpt, task.max_new_tokens, config.temperature, True, rules)
    sampled = make_runs_accuracy(gpt, task.max_new_tokens, config.temperature, False, rules)
    critical = make_runs_critical_probability(gpt)
    self.figures = dict(
        sampled_accuracy=lambda p: self._accuracy(sampled, p, self.rl_chunks),
        accuracy=lambda p: self._accuracy(greedy, p, self.rl_chunks),
        in_distribution_accuracy=lambda p: self._accuracy(greedy, p, self.in_chunks),
        critical_probability=lambda p: critical(p, self.teacher))

  def _accuracy(self, accuracy, params, chunks) -> np.ndarray:
    """[R] share solved over all chunks, each chunk weighted by its number of problems."""
    # In float64, products and quotient are exact: one chunk gives its own figure, bit for bit.
    solved = [np.asarray(accuracy(params, chunk,
                                  self.key if i == 0 else jax.random.fold_in(self.key, i)),
                         np.float64) * chunk.prompts.shape[0] for i, chunk in enumerate(chunks)]
    return sum(solved) / sum(c.prompts.shape[0] for c in chunks)

  def __call__(self, params, label: str = "", log=lambda *_: None,
               names=None) -> dict[str, list[float]]:
    """Figure name → one value per run, for `names` (default: every figure)."""
    names = tuple(self.figures) if names is None else names
    out, t0 = {}, time.time()
    for i, name in enumerate(names):
      out[name] = np.asarray(self.figures[name](params)).tolist()
      spent = time.time() - t0
      left = spent / (i + 1) * (len(names) - i - 1)
      log(f"  evaluating{' ' + label if label else ''}: {i + 1}/{len(names)} {name} "
          f"(mean {np.mean(out[name]):.3f})  {spent:.0f}s, ETA {left:.0f}s")
    return out
