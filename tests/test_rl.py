"""RL fine-tuning: one iteration, vmapped seeds equal to single runs, exact resumption, bad input."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critical_kl import arms
from critical_kl import checkpoints
from critical_kl import finetune
from critical_kl import rl
from critical_kl import rl_config
from critical_kl import runs as runs_lib
from critical_kl import runs_evaluation
from critical_kl import sampling
from critical_kl import task as task_lib
from critical_kl import token_weights
from conftest import adam_atol, loop_predicate_shapes  # tests/ is on sys.path under pytest
from conftest import tiny_rl_config as tiny_config


def test_iteration_changes_params_and_reports_metrics(tiny_model, tmp_path):
  logs = []
  out = finetune.finetune(tiny_config(tiny_model, num_iterations=1), str(tmp_path),
                          log=logs.append)
  ref, _, _ = checkpoints.load_model(tiny_model)
  moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a[0] - b).max()), out.params, ref)
  assert max(jax.tree_util.tree_leaves(moved)) > 0
  run = out.history[0]["runs"][0]
  for name in ("loss", "actor_loss", "value_loss", "entropy", "kl_k1", "kl_k2", "kl_k3",
               "kl_exact", "kl_critical", "kl_other", "certainty_mean", "weight_mean", "success",
               "selectivity_weight_critical", "selectivity_weight_other",
               "selectivity_reduction_share", "selectivity_critical_fraction"):
    assert np.isfinite(run[name]), name
  assert set(out.after) == {"accuracy", "sampled_accuracy", "in_distribution_accuracy",
                            "critical_probability"}
  # The final evaluation reports each of its four figures with an estimate of the time left.
  progress = [line for line in logs if "evaluating after RL" in line]
  assert len(progress) == 4 and all("ETA" in line for line in progress)


def test_evaluator_chunks_the_test_problems(tiny_model):
  """Chunked accuracy is the problem-weighted mean over chunks, chunk 0 with the key itself and
  chunk i with the key folded with i; one chunk is the plain figure."""
  _, gpt, pre = checkpoints.load_model(tiny_model)
  task = task_lib.make_task(pre["pretrain_max_digits"], 1)
  seen = []

  def fake(params, problems, key):  # [R]: the share of odd prompt lengths, and the key it got
    seen.append(np.asarray(jax.random.key_data(key)))
    return np.full(2, np.mean(np.asarray(problems.prompt_lengths) % 2), np.float32)

  typed = lambda **overrides: rl_config.RLConfig.from_config_dict(tiny_config(tiny_model,
                                                                             **overrides))
  whole = runs_evaluation.Evaluator(gpt, typed(eval_episodes=7, eval_chunk=0), task)
  chunked = runs_evaluation.Evaluator(gpt, typed(eval_episodes=7, eval_chunk=3), task)
  assert [c.prompts.shape[0] for c in chunked.rl_chunks] == [3, 3, 1]
  expected = whole._accuracy(fake, None, whole.rl_chunks)
  assert 0 < expected[0] < 1
  seen.clear()
  np.testing.assert_allclose(chunked._accuracy(fake, None, chunked.rl_chunks), expected,
                             rtol=1e-6)
  key = chunked.key
  wanted = [key, jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)]
  for got, want in zip(seen, wanted):
    np.testing.assert_array_equal(got, jax.random.key_data(want))


def test_evaluations_during_training_compute_the_curves_only(tiny_model, tmp_path):
  out = finetune.finetune(tiny_config(tiny_model, num_iterations=2, eval_every=1),
                          str(tmp_path), log=lambda _: None)
  assert set(out.history[0]["eval"]) == set(finetune.CURVE_FIGURES)
  assert "eval" not in out.history[1]  # the last iteration: the evaluation after RL instead
  assert len(out.after) == 4


def test_vmapped_seeds_equal_single_runs(tiny_model, tmp_path):
  c = tiny_config(tiny_model, num_seeds=2, arms="standard")
  both = finetune.finetune(c, str(tmp_path / "both"), log=lambda _: None)
  assert both.runs == [("standard", 0), ("standard", 1)]
  # Seed 0 alone: a single-seed run with the key and problems of seed 0.
  c1 = tiny_config(tiny_model, num_seeds=1, arms="standard")
  alone = finetune.finetune(c1, str(tmp_path / "alone"), log=lambda _: None)
  atol = adam_atol(c.learning_rate, c.num_iterations * c.num_minibatches)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=atol),
                         both.params, alone.params)
  # Seed 1 run apart (first_seed): the second run of the pair, so that runs made apart stay paired.
  c2 = tiny_config(tiny_model, num_seeds=1, first_seed=1, arms="standard")
  apart = finetune.finetune(c2, str(tmp_path / "apart"), log=lambda _: None)
  assert apart.runs == [("standard", 1)]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a[1], b[0], rtol=1e-5, atol=atol),
                         both.params, apart.params)


def test_arms_share_problems_but_differ_by_weights(tiny_model, tmp_path):
  config = tiny_config(tiny_model, num_iterations=1,
                       arms="standard,prioritized,matched,oracle,no_kl,standard+kl=0.5")
  out = finetune.finetune(config, str(tmp_path), log=lambda _: None)
  runs = {run["arm"]: run for run in out.history[0]["runs"]}
  scale = {arm.name: arm.kl_scale for arm in out.arms}
  assert runs["standard"]["weight_mean"] == pytest.approx(1.0)
  assert runs["prioritized"]["weight_mean"] < 1.0
  # The matched arm's α factor is the reference's mean Ĵ^β on correct completions, measured once.
  assert scale["matched"] == pytest.approx(out.reference["mean_weight"]) and scale["matched"] < 1
  assert runs["matched"]["weight_mean"] == pytest.approx(scale["matched"], rel=1e-5)
  assert runs["no_kl"]["weight_mean"] == 0.0 and runs["no_kl"]["kl_weighted"] == 0.0
  assert runs["standard+kl=0.5"]["weight_mean"] == pytest.approx(0.5)
  # The oracle lowers weights only on critical tokens reached by a correct prefix (a random tiny
  # model rarely reaches one; `test_oracle_weights_follow_the_correct_path` checks the rule).
  oracle = runs["oracle"]
  assert oracle["selectivity_weight_other"] == 1.0
  reached = oracle["selectivity_critical_fraction"] > 0
  assert oracle["selectivity_weight_critical"] == (0.0 if reached else 1.0)
  assert oracle["selectivity_reduction_share"] == (1.0 if reached else 0.0)
  # Same first rollout (same key and problems), so the same success and episode lengths.
  assert len({run["episode_length"] for run in runs.values()}) == 1


def test_oracle_weights_follow_the_correct_path():
  # One episode after a 2-token prompt: generated tokens 5, 6, 9 (the correct ones are 5, 6, 7, 8).
  tokens = jnp.array([[1, 2, 5, 6, 9, 0]])
  correct = jnp.array([[1, 2, 5, 6, 7, 8]])
  mask = jnp.array([[0, 0, 1, 1, 1, 0]], jnp.float32)
  critical = jnp.array([[False, False, False, True, True, False]])
  on_path = token_weights.correct_prefix(tokens, correct, mask)
  # A generated position counts while every generated token before it is right; the mistake is
  # at 4, so 4 itself still counts.
  np.testing.assert_array_equal(on_path, [[False, False, True, True, True, False]])
  critical_on_path = critical & on_path
  certainty = jnp.full((1, 6), 0.5)
  entropy = jnp.full((1, 6), 1.0)
  rule = lambda name: jnp.int32(arms.RULES.index(name))
  one = jnp.float32(1.0)
  oracle = arms.RunArms(rule("oracle"), jnp.float32(0.0), one, one, one)
  prioritized = arms.RunArms(rule("certainty"), jnp.float32(2.0), one, one, one)
  by_entropy = arms.RunArms(rule("entropy"), jnp.float32(0.0), one, jnp.float32(2.0), one)
  weights = lambda arm: rl.kl_weights(arm, certainty, critical_on_path, entropy, 0.0)
  np.testing.assert_array_equal(weights(oracle), [[1, 1, 1, 0, 0, 1]])
  np.testing.assert_allclose(weights(prioritized), np.full((1, 6), 0.25))
  np.testing.assert_allclose(weights(by_entropy), np.full((1, 6), 0.25))  # (1 + 1)^−2
  # A wrong token before a critical position takes it off the path.
  off = token_weights.correct_prefix(jnp.array([[1, 2, 9, 6, 7, 0]]), correct, mask)
  np.testing.assert_array_equal(off, [[False, False, True, False, False, False]])


def test_learning_rate_is_a_leaf_of_each_run(tiny_model):
  """Runs of one vmapped program may each have their own learning rate (optax.inject_hyperparams);
  a run at rate 0+ barely moves, one at the config's rate moves."""
  params, gpt, saved = checkpoints.load_model(tiny_model)
  c = rl_config.RLConfig.from_config_dict(tiny_config(tiny_model))
  task = task_lib.make_task(saved["pretrain_max_digits"], c.extra_digits)
  batch = runs_lib.stack([task_lib.collect_batch(task, c.episodes_per_collect, c.seed, 0, 0)] * 2)
  state = runs_lib.stack([rl.init_state(params, c, jax.random.key(0), rate)
                          for rate in (1e-12, 1e-3)])
  run_arms = arms.run_arms(list(arms.parse("standard+lr=1e-12,standard", 0.0)))
  new, _ = runs_lib.make_runs_iteration(gpt, c, task)(state, run_arms, batch, params)
  moved = [max(float(np.abs(a[i] - b).max()) for a, b in zip(jax.tree_util.tree_leaves(new.params),
                                                             jax.tree_util.tree_leaves(params)))
           for i in range(2)]
  assert moved[0] < 1e-8 < 1e-5 < moved[1]


def test_resume_equals_uninterrupted(tiny_model, tmp_path):
  c = tiny_config(tiny_model, num_iterations=3)
  straight = finetune.finetune(c, str(tmp_path / "a"), log=lambda _: None)
  finetune.finetune(tiny_config(tiny_model, num_iterations=1), str(tmp_path / "b"),
                    log=lambda _: None)
  logs = []
  resumed = finetune.finetune(c, str(tmp_path / "b"), log=logs.append)
  assert any("resumed from iteration 1" in line for line in logs)
  jax.tree_util.tree_map(np.testing.assert_array_equal, straight.params, resumed.params)
  with open(tmp_path / "b" / "metrics.jsonl") as f:
    assert [json.loads(l)["iteration"] for l in f] == [1, 2, 3]


@pytest.mark.parametrize("change,named", [
    (dict(first_seed=5), "first_seed: saved 0 vs requested 5"),  # same shapes: would resume
    (dict(kl_coef=1.0), "kl_coef"),
    (dict(num_seeds=3), "num_seeds"),  # other shapes: used to be taken for damage
    (dict(arms="prioritized,standard"), "arms")])
def test_resume_of_other_runs_is_refused_and_deletes_nothing(tiny_model, tmp_path, change, named):
  finetune.finetune(tiny_config(tiny_model, num_iterations=2), str(tmp_path), log=lambda _: None)
  with pytest.raises(checkpoints.CheckpointError, match=f"another run config .*{named}"):
    finetune.finetune(tiny_config(tiny_model, num_iterations=3, **change), str(tmp_path),
                      log=lambda _: None, resume_previous=True)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
  # What only changes the length, the evaluation or the checkpoint cadence does resume.
  logs = []
  finetune.finetune(tiny_config(tiny_model, num_iterations=3, eval_episodes=8,
                                checkpoint_every=3), str(tmp_path), log=logs.append)
  assert any("resumed from iteration 2" in line for line in logs)


@pytest.mark.parametrize("field,value,message", [
    ("estimator", "k9", "estimator"), ("certainty_method", "entropy", "certainty"),
    ("beta", -1.0, "beta"), ("temperature", 0.0, "temperature"), ("intercept", 0.5, "intercept"),
    ("loss", "reinforce", "loss"), ("eval_chunk", -1, "eval_chunk")])
def test_bad_hyper_parameters_raise(tiny_model, field, value, message):
  with pytest.raises(ValueError, match=message):
    rl_config.RLConfig.from_config_dict(tiny_config(tiny_model, **{field: value}))


def test_cli_bad_input_is_one_line(tiny_model, tmp_path):
  cmd = [sys.executable, "-m", "experiments.rl_finetune", f"--workdir={tmp_path}",
         f"--config.checkpoint={tiny_model}", "--config.beta=-3"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
  assert proc.returncode != 0
  assert "beta" in proc.stderr and "Traceback" not in proc.stderr
  proc = subprocess.run(cmd[:4] + ["--config.checkpoint=/does/not/exist"], capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode != 0 and "no checkpoint" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_ppo_with_kl_in_reward_runs(tiny_model, tmp_path):
  out = finetune.finetune(
      tiny_config(tiny_model, num_iterations=1, loss="ppo", kl_placement="reward"),
      str(tmp_path), log=lambda _: None)
  run = out.history[0]["runs"][0]
  assert np.isfinite(run["clip_fraction"]) and np.isfinite(run["approx_kl"])


def test_beyond_the_paper_in_one_program(tiny_model, tmp_path):
  """The exact KL, the KL in the advantages, entropy weights and a policy-gradient mask, as arms
  and config fields of the same vmapped loop."""
  config = tiny_config(tiny_model, num_iterations=1, estimator="exact",
                       arms="standard,entropy+c=2,prioritized+rho=0.5")
  out = finetune.finetune(config, str(tmp_path / "exact"), log=lambda _: None)
  runs = {run["arm"]: run for run in out.history[0]["runs"]}
  assert runs["standard"]["pg_weight_mean"] == 1.0
  assert 0.0 < runs["prioritized+rho=0.5"]["pg_weight_mean"] < 1.0
  assert 0.0 < runs["entropy+c=2"]["weight_mean"] < 1.0
  for run in runs.values():
    assert all(np.isfinite(v) for k, v in run.items() if k not in ("arm", "seed"))
  config = tiny_config(tiny_model, num_iterations=1, kl_placement="advantage")
  run = finetune.finetune(config, str(tmp_path / "adv"), log=lambda _: None).history[0]["runs"][0]
  assert np.isfinite(run["loss"])


def test_runs_share_one_rollout_loop(tiny_model):
  """Vmapped over runs, the rollout loops stop on one predicate for all runs: a per-run predicate
  makes XLA select the whole KV cache at every decoding step (several times slower)."""
  params, gpt, saved = checkpoints.load_model(tiny_model)
  c = rl_config.RLConfig.from_config_dict(tiny_config(tiny_model))
  task = task_lib.make_task(saved["pretrain_max_digits"], c.extra_digits)
  batch = runs_lib.stack([task_lib.collect_batch(task, c.episodes_per_collect, c.seed, seed, 0)
                          for seed in range(2)])
  state = runs_lib.stack([rl.init_state(params, c, jax.random.key(seed)) for seed in range(2)])
  run_arms = arms.run_arms(list(arms.parse("standard,prioritized", 150.0)))
  iteration = jax.make_jaxpr(runs_lib.make_runs_iteration(gpt, c, task))(state, run_arms, batch,
                                                                         params)
  accuracy = jax.make_jaxpr(runs_evaluation.make_runs_accuracy(gpt, task.max_new_tokens, 1.0,
                                                               True))(
      state.params, jax.tree_util.tree_map(lambda x: x[0], batch.problems), jax.random.key(0))
  # One loop per piece of the rollout (`sampling.segment_ends`), each on a scalar predicate.
  pieces = len(sampling.segment_ends(task.max_new_tokens, sampling.SEGMENTS))
  assert loop_predicate_shapes(iteration.jaxpr) == [()] * pieces
  assert loop_predicate_shapes(accuracy.jaxpr) == [()] * pieces
