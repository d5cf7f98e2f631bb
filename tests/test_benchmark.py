"""The benchmark: its figures on a tiny model; greedy decoding without a cache equals rollout."""
import math

import jax
import numpy as np

from critical_kl import model as model_lib
from critical_kl import pretrain
from critical_kl import rl
from critical_kl import sampling
from experiments import benchmark

TINY = dict(n_layer=1, n_head=2, n_embd=16, value_hidden=8)


def tiny_config():
  config = benchmark.task_config(TINY, batch_size=2)
  config.pretrain_max_digits = 2
  return config


def test_figures_are_positive_and_finite():
  peak = benchmark.measure_matmul_peak(size=64, reps=1)
  figures = benchmark.benchmark_model(tiny_config(), peak_gflops=peak, gen_batch=2, gen_tokens=5,
                                      recompute_tokens=5, reps=1, log=lambda _: None)
  rates = ("train_step_s", "train_tokens_per_s", "train_gflops_per_s", "train_peak_fraction",
           "cached_tokens_per_s", "recompute_tokens_per_s", "cached_speedup")
  for name in rates:
    assert math.isfinite(figures[name]) and figures[name] > 0, name
  report = benchmark.format_report(peak, {"default": figures})
  assert "cached speed-up" in report and "skipped" not in report


def test_rl_figures_are_positive_and_finite():
  gpt, config, _ = benchmark.rl_setup(TINY, batch=2)
  peak = benchmark.measure_matmul_peak(size=64, reps=1)
  figures = benchmark.benchmark_rl(gpt, config, rl.make_task(1, 1), peak_gflops=peak, reps=1,
                                   reference=benchmark.RL_REFERENCE["rl_small"])
  assert figures["episode_length"] == 257  # PAD is never sampled: every episode runs to its limit
  rates = ("rollout_s", "update_s", "iteration_s", "rollout_tokens_per_s", "update_tokens_per_s",
           "iteration_tokens_per_s", "iteration_gflops_per_s", "iteration_peak_fraction",
           "vs_authors", "vs_eager")
  for name in rates:
    assert math.isfinite(figures[name]) and figures[name] > 0, name
  report = benchmark.format_rl_report({"rl_small": figures})
  assert "eager PyTorch's 2,350 tokens/s" in report and "skipped" not in report


def test_recomputed_greedy_matches_rollout():
  """Full recomputation and the cache give the same greedy tokens, up to where rollout stops."""
  config = tiny_config()
  gpt = pretrain.model_config(config)
  params = model_lib.init_params(gpt, jax.random.key(0))
  problems = benchmark.generation_prompts(config, 4)
  args = (params, gpt, problems.prompts, problems.prompt_lengths, 5)
  recomputed = np.asarray(benchmark.recomputed_greedy(*args, steps=5))
  np.testing.assert_array_equal(recomputed, benchmark.cached_greedy(*args))
  traj = sampling.rollout(params, gpt, problems, jax.random.key(0), max_new_tokens=5, greedy=True)
  ends = np.asarray(problems.prompt_lengths + traj.lengths)
  assert ends.sum() > np.asarray(problems.prompt_lengths).sum() + 4  # some rows ran past 1 token
  compared = np.arange(recomputed.shape[1])[None, :] < ends[:, None]
  np.testing.assert_array_equal(recomputed[compared], np.asarray(traj.tokens)[compared])
