"""The main experiment end to end on a tiny model: table, plot, summary and the final JSON line."""
import json
import os
import subprocess
import sys


def test_main_job_runs_and_ends_with_json(tiny_model, tmp_path):
  cmd = [sys.executable, "-m", "experiments.prioritized_kl", f"--workdir={tmp_path}",
         f"--config.checkpoint={tiny_model}", "--config.num_seeds=2", "--config.num_iterations=2",
         "--config.episodes_per_collect=4", "--config.num_minibatches=2",
         "--config.eval_episodes=4", "--config.critical_eval_problems=4",
         "--config.matched_problems=4", "--config.eval_every=1", "--config.temperature=2.0"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  arms = ["standard", "prioritized", "matched", "oracle", "no_kl"]
  assert list(result["arms"]) == arms  # the default arm list: the paper's two and the controls
  for arm in result["arms"].values():
    for key in ("accuracy_before", "accuracy_after", "sampled_accuracy_after"):
      assert 0.0 <= arm[key]["mean"] <= 1.0 and len(arm[key]["ci95"]) == 2
  assert result["seeds"] == 2 and result["episodes"] == 8 and result["seconds"] > 0
  assert result["test_problems"] == 4 and result["headline"] == "sampled_accuracy"
  assert list(result["differences"]) == arms[1:]
  # And against the paper's arm, for the arms that are neither it nor standard.
  assert list(result["prioritized_differences"]) == arms[2:]
  assert "oracle − prioritized, sampled accuracy" in proc.stdout
  for diff in result["differences"].values():
    assert -1.0 <= diff["mean"] <= 1.0 and diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
  # The matched arm's α factor is the reference's teacher-forced mean weight (≈ 0 for a random model).
  assert result["matched_kl_factor"] == result["reference_selectivity"]["mean_weight"]
  assert 0.0 <= result["matched_kl_factor"] <= 1.0
  assert os.path.getsize(result["plot"]) > 1000
  # Every run's figures and the curves, so that runs made apart can be merged (merge_runs).
  assert [(r["arm"], r["seed"]) for r in result["runs"]] == [(a, s) for a in arms for s in (0, 1)]
  assert set(result["curves"]) == {"sampled_accuracy", "critical_probability", "success"}
  assert result["curves"]["sampled_accuracy"]["episodes"] == [0, 4, 8]
  with open(tmp_path / "summary.json") as f:
    summary = json.load(f)
  assert summary["config"]["num_seeds"] == 2
  assert {k: v for k, v in summary.items() if k != "config"} == result  # one schema
  assert "prioritized − standard, sampled accuracy" in proc.stdout
  assert "evaluating at iteration 1" in proc.stdout
