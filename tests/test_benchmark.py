"""The benchmark: its figures on a tiny model; greedy decoding without a cache equals rollout; the
scale-out section on 2 simulated CPU devices."""
import json
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


def test_mesh_shapes():
  assert benchmark.mesh_shapes(1, ["1", "all"]) == [(1, 1)]
  assert benchmark.mesh_shapes(8, ["1", "2", "all"]) == [(8, 1), (4, 2), (1, 8)]
  assert benchmark.mesh_shapes(2, [4]) == []  # 4 does not divide 2


def test_efficiency_is_relative_to_one_device_at_the_same_batch():
  rows = [dict(devices=1, batch=8, tokens_per_s=100.0),
          dict(devices=2, batch=8, tokens_per_s=150.0),
          dict(devices=2, batch=16, tokens_per_s=300.0)]
  benchmark.add_efficiency(rows)
  assert [row["tokens_per_s_per_device"] for row in rows] == [100.0, 75.0, 150.0]
  assert [row["efficiency"] for row in rows] == [1.0, 0.75, None]  # no 1-device row at batch 16


def test_scaling_section_on_two_simulated_devices():
  """Throughput and compiled memory of a tiny model on 2 simulated CPU devices, in a subprocess."""
  figures = benchmark.measure_scaling(
      model=("tiny", TINY), batch_sizes=[1], device_counts=[2], params_sizes=["1", "all"],
      reps=1, memory_model=("tiny", TINY), memory_batch=2,
      # Unoptimized code generation roughly halves the compile time of every program.
      extra_xla_flags="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
      log=lambda _: None)
  figures = json.loads(json.dumps(figures))  # JSON-ready
  assert figures["simulated"] and figures["platform"] == "cpu"
  # Batch 1 runs on the 1×2 mesh only: the data axis of 2×1 cannot split it.
  assert [(row["data"], row["params"], row["batch"]) for row in figures["pretrain"]] == [(1, 2, 1)]
  assert figures["notes"] == ["pre-train batch 1 skipped on 2×1: the data axis does not divide it"]
  for row in figures["pretrain"]:
    assert row["devices"] == 2 and row["efficiency"] is None  # no 1-device row
    for name in ("step_s", "tokens_per_s", "tokens_per_s_per_device"):
      assert math.isfinite(row[name]) and row[name] > 0, name
  assert figures["rl"] == []
  assert [(row["program"], row["data"], row["params"]) for row in figures["memory"]] == [
      ("pretrain", 2, 1), ("rl", 2, 1), ("pretrain", 1, 2), ("rl", 1, 2)]
  for row in figures["memory"]:
    for name in ("state_bytes", "argument_bytes", "output_bytes", "temp_bytes", "total_bytes",
                 "xla_peak_bytes", "compile_s"):
      assert row[name] > 0, (row["program"], name)
    assert row["measured_peak_bytes"] is None  # CPU devices keep no statistics
  # FSDP over the 2 devices halves the parameters and optimizer state each one holds.
  state = {(row["program"], row["params"]): row["state_bytes"] for row in figures["memory"]}
  for program in benchmark.PROGRAMS:
    assert state[program, 2] < 0.6 * state[program, 1]
  report = benchmark.format_scaling_report(figures)
  assert "simulated CPU devices" in report and "memory per device in MiB of tiny" in report
  assert "\n          2          1×2          1 " in report  # the throughput row
  assert report.endswith("note: pre-train batch 1 skipped on 2×1: the data axis does not divide it")
