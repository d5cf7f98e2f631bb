"""RL fine-tuning: one iteration, vmapped seeds equal to single runs, exact resumption, bad input."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critical_kl import checkpoints
from critical_kl import finetune
from critical_kl import rl
from critical_kl.configs import rl_default
from test_sampling import loop_predicate_shapes  # tests/ is on sys.path under pytest


def tiny_config(model_path, **overrides):
  c = rl_default.get_config()
  c.checkpoint = model_path
  c.update(num_iterations=2, episodes_per_collect=4, num_minibatches=2, eval_episodes=4,
           critical_eval_problems=4, checkpoint_every=1, learning_rate=1e-3, temperature=2.0)
  c.update(overrides)
  return c


def test_iteration_changes_params_and_reports_metrics(tiny_model, tmp_path):
  out = finetune.finetune(tiny_config(tiny_model, num_iterations=1), str(tmp_path),
                          {"prioritized": 150.0}, log=lambda _: None)
  ref, _, _ = checkpoints.load_model(tiny_model)
  moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a[0] - b).max()), out["params"], ref)
  assert max(jax.tree_util.tree_leaves(moved)) > 0
  run = out["history"][0]["runs"][0]
  for name in ("loss", "actor_loss", "value_loss", "entropy", "kl_k1", "kl_k2", "kl_k3",
               "kl_exact", "kl_critical", "kl_other", "certainty_mean", "weight_mean", "success"):
    assert np.isfinite(run[name]), name
  assert set(out["after"]) == {"accuracy", "sampled_accuracy", "in_distribution_accuracy",
                               "critical_probability"}


def test_vmapped_seeds_equal_single_runs(tiny_model, tmp_path):
  c = tiny_config(tiny_model, num_seeds=2)
  both = finetune.finetune(c, str(tmp_path / "both"), {"standard": 0.0}, log=lambda _: None)
  # Seed 1 alone: a single-seed run whose key and problems are those of seed index 1.
  c1 = tiny_config(tiny_model, num_seeds=1)
  arms_runs = finetune._runs({"standard": 0.0}, 2)
  assert arms_runs == [("standard", 0), ("standard", 1)]
  alone = finetune.finetune(c1, str(tmp_path / "alone"), {"standard": 0.0}, log=lambda _: None)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a[0], b[0], atol=1e-6),
                         both["params"], alone["params"])


def test_arms_share_problems_but_differ_by_weights(tiny_model, tmp_path):
  out = finetune.finetune(tiny_config(tiny_model, num_iterations=1), str(tmp_path),
                          {"standard": 0.0, "prioritized": 150.0}, log=lambda _: None)
  standard, prioritized = out["history"][0]["runs"]
  assert standard["weight_mean"] == pytest.approx(1.0)
  assert prioritized["weight_mean"] < 1.0
  # Same first rollout (same key and problems), so the same success and episode lengths.
  assert standard["episode_length"] == prioritized["episode_length"]


def test_resume_equals_uninterrupted(tiny_model, tmp_path):
  c = tiny_config(tiny_model, num_iterations=3)
  straight = finetune.finetune(c, str(tmp_path / "a"), {"prioritized": 150.0}, log=lambda _: None)
  finetune.finetune(tiny_config(tiny_model, num_iterations=1), str(tmp_path / "b"),
                    {"prioritized": 150.0}, log=lambda _: None)
  logs = []
  resumed = finetune.finetune(c, str(tmp_path / "b"), {"prioritized": 150.0}, log=logs.append)
  assert any("resumed from iteration 1" in line for line in logs)
  jax.tree_util.tree_map(np.testing.assert_array_equal, straight["params"], resumed["params"])
  with open(tmp_path / "b" / "metrics.jsonl") as f:
    assert [json.loads(l)["iteration"] for l in f] == [1, 2, 3]


@pytest.mark.parametrize("field,value,message", [
    ("estimator", "k9", "estimator"), ("certainty_method", "entropy", "certainty"),
    ("beta", -1.0, "beta"), ("temperature", 0.0, "temperature"), ("intercept", 0.5, "intercept"),
    ("loss", "reinforce", "loss")])
def test_bad_hyper_parameters_raise(tiny_model, field, value, message):
  with pytest.raises(ValueError, match=message):
    rl.validate(tiny_config(tiny_model, **{field: value}))


def test_cli_bad_input_is_one_line(tiny_model, tmp_path):
  cmd = [sys.executable, "-m", "experiments.rl_finetune", f"--workdir={tmp_path}",
         f"--config.checkpoint={tiny_model}", "--config.beta=-3"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "beta" in proc.stderr and "Traceback" not in proc.stderr
  proc = subprocess.run(cmd[:4] + ["--config.checkpoint=/does/not/exist"], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0 and "no checkpoint" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_ppo_with_kl_in_reward_runs(tiny_model, tmp_path):
  out = finetune.finetune(tiny_config(tiny_model, num_iterations=1, loss="ppo", kl_in_reward=True),
                          str(tmp_path), {"prioritized": 150.0}, log=lambda _: None)
  run = out["history"][0]["runs"][0]
  assert np.isfinite(run["clip_fraction"]) and np.isfinite(run["approx_kl"])


def test_runs_share_one_rollout_loop(tiny_model):
  """Vmapped over runs, the rollout loops stop on one predicate for all runs: a per-run predicate
  makes XLA select the whole KV cache at every decoding step (several times slower)."""
  params, gpt, saved = checkpoints.load_model(tiny_model)
  c = tiny_config(tiny_model)
  task = rl.make_task(saved["pretrain_max_digits"], c.extra_digits)
  batch = rl.stack([rl.collect_batch(c, task, seed, 0) for seed in range(2)])
  state = rl.stack([rl.init_state(params, c, jax.random.key(seed)) for seed in range(2)])
  iteration = jax.make_jaxpr(rl.make_runs_iteration(gpt, c, task))(
      state, jnp.zeros(2), batch.problems, batch.critical, params)
  accuracy = jax.make_jaxpr(rl.make_runs_accuracy(gpt, task.max_new_tokens, 1.0, True))(
      state.params, jax.tree_util.tree_map(lambda x: x[0], batch.problems), jax.random.key(0))
  assert loop_predicate_shapes(iteration.jaxpr) == [()]
  assert loop_predicate_shapes(accuracy.jaxpr) == [()]
