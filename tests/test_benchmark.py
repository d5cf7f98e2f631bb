"""The benchmarks: their figures on a tiny model; greedy decoding without a cache equals rollout;
the RL command's JSON; the eager PyTorch peer is our model, our episode rules, our GAE and our loss;
the scale-out section on 2 simulated CPU devices."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import common
from benchmarks import generation
from benchmarks import pretrain
from benchmarks import rl
from benchmarks import scaling
from benchmarks import scaling_worker
from critical_kl import advantages
from critical_kl import arithmetic
from critical_kl import certainty as certainty_lib
from critical_kl import losses
from critical_kl import model as model_lib
from critical_kl import pretrain as pretrain_lib
from critical_kl import sampling
from critical_kl import task as task_lib
from critical_kl import token_weights
from critical_kl import tokenizer
from critical_kl import trajectory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = rl.SMOKE["model"]


def tiny_config():
  config = common.task_config(TINY, batch_size=2)
  config.pretrain_max_digits = 2
  return config


def test_figures_are_positive_and_finite():
  peak = common.measure_matmul_peak(size=64, reps=1)
  figures = pretrain.benchmark_model(tiny_config(), peak_gflops=peak, gen_batch=2, gen_tokens=5,
                                     recompute_tokens=5, reps=1, log=lambda _: None)
  rates = ("train_step_s", "train_tokens_per_s", "train_gflops_per_s", "train_peak_fraction",
           "cached_tokens_per_s", "recompute_tokens_per_s", "cached_speedup")
  for name in rates:
    assert math.isfinite(figures[name]) and figures[name] > 0, name
  report = pretrain.format_report(peak, {"default": figures})
  assert "cached speed-up" in report and "skipped" not in report


def test_recomputed_greedy_matches_rollout():
  """Full recomputation and the library's cached rollout give the same greedy tokens."""
  config = tiny_config()
  gpt = pretrain_lib.model_config(config)
  params = common.never_pad(model_lib.init_params(gpt, jax.random.key(0)))
  problems = generation.generation_prompts(config, 4)
  recomputed = generation.recomputed_greedy(params, gpt, problems.prompts,
                                            problems.prompt_lengths, 5, steps=5)
  traj = sampling.rollout(params, gpt, problems, jax.random.key(0), rules=task_lib.RULES,
                          max_new_tokens=5, greedy=True)
  np.testing.assert_array_equal(traj.lengths, 5)  # PAD is never sampled: every row runs to 5
  np.testing.assert_array_equal(recomputed, traj.tokens)


def test_rl_smoke_run_ends_with_the_json_schema():
  """`python -m benchmarks.rl --smoke`: ours, and the peer where torch is installed."""
  cmd = [sys.executable, "-m", "benchmarks.rl", "--models=rl_small,paper85m", "--smoke",
         "--peer_threads=1"]
  # The persistent compilation cache of conftest.py, for the subprocess too.
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(proc.stdout.strip().splitlines()[-1])
  assert figures["matmul_peak_gflops_per_s"] > 0 and figures["cpu_count"] >= 1
  assert list(figures["rl"]) == ["rl_small", "paper85m"]
  with_peer = rl.load_peer() is not None
  assert figures["notes"] == ([] if with_peer else [rl.PEER_INSTALL_NOTE])
  for name, f in figures["rl"].items():
    assert f["episode_length"] == 257, name  # PAD is never sampled: every episode runs to its limit
    assert f["tokens_per_s"] > 0 and 0 < f["peak_fraction"] < 1, name
    assert f["vs_authors"] is None  # smoke sizes are not the authors' sizes
    if with_peer:
      assert f["peer"]["tokens"] == 2 * 257 and f["peer_tokens_per_s"] > 0, name
      assert f["ratio"] == pytest.approx(f["tokens_per_s"] / f["peer_tokens_per_s"])
    else:
      assert f["peer"] is f["peer_tokens_per_s"] is f["ratio"] is None, name
  assert "ours × eager PyTorch" in proc.stdout and "target:" not in proc.stdout


def test_accelerator_smoke_run_ends_with_the_json_schema():
  """`python -m benchmarks.accelerator --smoke`: float32 and bfloat16, each against its own peak."""
  cmd = [sys.executable, "-m", "benchmarks.accelerator", "--smoke"]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(proc.stdout.strip().splitlines()[-1])
  assert figures["model"] == "smoke" and list(figures["dtypes"]) == ["float32", "bfloat16"]
  for dtype, f in figures["dtypes"].items():
    assert f["matmul_peak_gflops_per_s"] > 0, dtype
    for name in ("pretrain", "rl"):
      assert f[f"{name}_tokens_per_s"] > 0, (dtype, name)
      assert 0 < f[f"{name}_peak_fraction"] < 10, (dtype, name)
    assert f["rl_episode_length"] == 257, dtype  # PAD is never sampled, in bfloat16 too
  bad = subprocess.run(cmd + ["--dtypes=float16"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
  assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --dtypes")


@pytest.fixture(name="peer_torch")
def fixture_peer_torch():
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from benchmarks import peer_torch  # pylint: disable=import-outside-toplevel
  return peer_torch


def _tiny_rl():
  """A tiny GPT, the RL config and task of the smoke sizes (2-digit problems)."""
  return rl.rl_setup(TINY, batch=3, max_digits=1)


def test_peer_is_our_model(peer_torch):
  """Its logits and values on left-padded prompts equal `model.forward` on right-padded ones."""
  import torch  # pylint: disable=import-outside-toplevel
  gpt, _, task = _tiny_rl()
  params = model_lib.init_params(gpt, jax.random.key(0))
  problems = task_lib.encode_problems(np.array([[12, 34], [5, 7], [1, 23]]), task.prompt_length)
  tokens, mask = peer_torch.left_pad(problems.prompts, problems.prompt_lengths)
  with torch.no_grad():
    logits, values = peer_torch.policy_from_params(params, gpt)(tokens, mask)
  ours = model_lib.forward(params, gpt, problems.prompts)
  width = tokens.shape[1]
  for row, length in enumerate(np.asarray(problems.prompt_lengths)):
    np.testing.assert_array_equal(tokens[row, width - length:], problems.prompts[row, :length])
    np.testing.assert_allclose(logits[row, width - length:], ours.logits[row, :length], atol=1e-5)
    np.testing.assert_allclose(values[row, width - length:], ours.values[row, :length], atol=1e-5)


def test_peer_episode_rules_are_the_rollouts(peer_torch):
  """Lengths and rewards equal those of `task.score_tokens`, the rollout's own rules."""
  operands = np.array([[12, 34], [12, 34], [5, 7], [5, 7]])
  limit = 200
  right = arithmetic.scratchpad(12, 34)
  texts = [right + "77", right.replace("4 6\n", "4 7\n") + "7", "\n<scr", "7" * limit]
  generated = np.stack([np.resize(tokenizer.encode(t.ljust(limit, "7")), limit) for t in texts])
  generated[2, 5] = tokenizer.PAD_ID
  problems = task_lib.encode_problems(operands)
  expected = [arithmetic.result(a, b) for a, b in operands]
  lengths, rewards = peer_torch.episode_lengths_and_rewards(generated, expected, -1.0)
  state = task_lib.score_tokens(generated, problems.expected, problems.expected_lengths, limit)
  np.testing.assert_array_equal(lengths, state.lengths)
  np.testing.assert_array_equal(lengths, [len(right), len(right), 6, limit])
  np.testing.assert_array_equal(rewards, np.where(state.solved, 1.0, -1.0))
  np.testing.assert_array_equal(rewards, [1.0, -1.0, -1.0, -1.0])


def test_peer_gae_is_ours(peer_torch):
  import torch  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  rewards, values = rng.normal(size=(2, 3, 7)).astype(np.float32)
  mask = (np.arange(7)[None, :] < np.array([[7], [4], [0]])).astype(np.float32)
  theirs = peer_torch.gae(*(torch.tensor(x) for x in (rewards, values, mask)), 0.9, 0.95)
  ours = advantages.gae(rewards, values, mask, 0.9, 0.95)
  for t, o in zip(theirs, ours):
    np.testing.assert_allclose(t, o, rtol=1e-5, atol=1e-6)


def test_peer_update_gives_our_loss(peer_torch):
  """On the episodes of our rollout, the peer's loss is ours (`losses.a2c_loss`, k2 KL, β = 1)."""
  import torch  # pylint: disable=import-outside-toplevel
  gpt, config, task = _tiny_rl()
  params = model_lib.init_params(gpt, jax.random.key(0))
  ref_params = model_lib.init_params(gpt, jax.random.key(1))
  # Operands of two digits fill the prompts: left and right padding are the same buffer.
  problems = task_lib.encode_problems(np.array([[12, 34], [56, 78], [90, 11]]), task.prompt_length)
  traj = sampling.rollout(params, gpt, problems, jax.random.key(2), rules=task_lib.RULES,
                          max_new_tokens=task.max_new_tokens, temperature=config.temperature,
                          failure_reward=config.failure_reward)
  assert len(set(np.asarray(traj.lengths))) > 1  # PAD ends episodes at different lengths
  ref_logits = trajectory.align_to_tokens(model_lib.forward(ref_params, gpt, traj.tokens).logits)
  ref_logp, _ = losses.token_logp_and_entropy(ref_logits, traj.tokens, config.temperature)
  certainty = certainty_lib.certainty(ref_logits, config.certainty_method,
                                      config.certainty_temperature)
  traj = traj.replace(ref_logp=ref_logp, certainty=certainty)
  adv, ret = advantages.gae(traj.rewards, traj.values, traj.mask, config.gamma, config.lam)
  out = model_lib.forward(params, gpt, traj.tokens)
  terms = config.loss
  cfg = losses.LossConfig(estimator="k2", kl_coef=terms.kl_coef, value_coef=terms.value_coef,
                          entropy_coef=terms.entropy_coef, temperature=config.temperature)
  ours, _ = losses.a2c_loss(trajectory.align_to_tokens(out.logits),
                            trajectory.align_to_tokens(out.values), ref_logits, traj, adv, ret,
                            token_weights.prioritized_weights(certainty, 1.0), cfg)

  peer = peer_torch.Peer(params, gpt, config, beta=1.0, max_new_tokens=task.max_new_tokens,
                         ref_params=ref_params)
  expected = [arithmetic.result(a, b) for a, b in [[12, 34], [56, 78], [90, 11]]]
  start = task.prompt_length
  lengths, final_rewards = peer_torch.episode_lengths_and_rewards(
      np.asarray(traj.tokens[:, start:]), expected, config.failure_reward)
  np.testing.assert_array_equal(lengths, traj.lengths)
  episodes = peer_torch.Episodes(torch.tensor(np.asarray(traj.tokens), dtype=torch.long),
                                 torch.ones(3, start, dtype=torch.long), lengths, final_rewards)
  assert peer.update(episodes) == pytest.approx(float(ours), rel=1e-4)


def test_peer_runs_and_gives_a_positive_throughput(peer_torch):
  gpt, config, task = _tiny_rl()
  params = common.never_pad(model_lib.init_params(gpt, jax.random.key(0)))
  problems = task_lib.encode_problems(np.array([[12, 34], [5, 7], [1, 23]]), task.prompt_length)
  figures = peer_torch.measure(params, gpt, config, problems, beta=150.0,
                               max_new_tokens=task.max_new_tokens, reps=1, threads=1)
  assert figures["tokens"] == 3 * task.max_new_tokens  # PAD is never sampled
  assert figures["tokens_per_s"] > 0 and figures["generate_tokens_per_s"] > 0
  assert math.isfinite(figures["loss"]) and figures["threads"] == 1


def test_peer_refuses_what_it_does_not_implement(peer_torch):
  gpt, config, task = _tiny_rl()
  config = dataclasses.replace(config, objective="ppo")
  with pytest.raises(ValueError, match="ppo"):
    peer_torch.Peer(model_lib.init_params(gpt, jax.random.key(0)), gpt, config, beta=0.0,
                    max_new_tokens=task.max_new_tokens)


def test_mesh_shapes():
  assert scaling.mesh_shapes(1, ["1", "all"]) == [(1, 1)]
  assert scaling.mesh_shapes(8, ["1", "2", "all"]) == [(8, 1), (4, 2), (1, 8)]
  assert scaling.mesh_shapes(2, [4]) == []  # 4 does not divide 2


def test_efficiency_is_relative_to_one_device_at_the_same_batch():
  rows = [dict(devices=1, batch=8, tokens_per_s=100.0),
          dict(devices=2, batch=8, tokens_per_s=150.0),
          dict(devices=2, batch=16, tokens_per_s=300.0)]
  scaling.add_efficiency(rows)
  assert [row["tokens_per_s_per_device"] for row in rows] == [100.0, 75.0, 150.0]
  assert [row["efficiency"] for row in rows] == [1.0, 0.75, None]  # no 1-device row at batch 16


def test_scaling_section_on_two_simulated_devices():
  """Throughput and compiled memory of a tiny model on 2 simulated CPU devices, in a subprocess."""
  figures = scaling.measure_scaling(
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
  for program in scaling_worker.PROGRAMS:
    assert state[program, 2] < 0.6 * state[program, 1]
  report = scaling.format_scaling_report(figures)
  assert "simulated CPU devices" in report and "memory per device in MiB of tiny" in report
  assert "\n          2          1×2          1 " in report  # the throughput row
  assert report.endswith("note: pre-train batch 1 skipped on 2×1: the data axis does not divide it")
