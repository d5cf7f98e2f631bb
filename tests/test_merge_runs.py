"""Merging comparisons made apart: paired by seed, refused unless they are one experiment."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import comparison
from experiments import merge_runs

ARMS = ("standard", "prioritized")


def part(seeds, standard, prioritized, **config):
  """A summary.json of `seeds`, each arm's sampled accuracy after RL given per seed."""
  records = []
  for arm, values in zip(ARMS, (standard, prioritized)):
    for seed, x in zip(seeds, values):
      records.append(dict(arm=arm, seed=seed, **{f"{name}_{when}": (x if when == "after" else 0.1)
                                                  for name, _ in comparison.FIGURES
                                                  for when in ("before", "after")}))
  o = comparison.outcomes_of_runs(ARMS, records)
  curve_values = [[0.1] * len(records), [r["sampled_accuracy_after"] for r in records]]
  return dict(comparison.comparison_fields(o), seeds=len(seeds), episodes=100, test_problems=8,
              headline=comparison.HEADLINE, digits=6, temperature=1.0, matched_kl_factor=None,
              reference_selectivity={"share": 0.2}, seconds=10.0, plot="p.png",
              curves={comparison.HEADLINE: dict(episodes=[0, 100], values=curve_values)},
              config=dict(dict(seed=0, extra_digits=1, first_seed=seeds[0],
                               num_seeds=len(seeds)), **config))


def test_merged_differences_are_those_of_all_seeds_paired():
  a = part([0, 1], [0.10, 0.20], [0.15, 0.10])
  b = part([2, 3, 4], [0.30, 0.20, 0.10], [0.20, 0.30, 0.10])
  merged = merge_runs.merge([b, a], ["b", "a"], "m.png")  # any order: runs sorted by arm, seed
  assert merged["seeds"] == 5 and merged["seconds"] == 20.0
  assert [(r["arm"], r["seed"]) for r in merged["runs"]] == [
      (arm, s) for arm in ARMS for s in range(5)]
  diffs = np.array([0.15, 0.10, 0.20, 0.30, 0.10]) - np.array([0.10, 0.20, 0.30, 0.20, 0.10])
  assert merged["differences"]["prioritized"]["mean"] == pytest.approx(diffs.mean())
  assert merged["differences"]["prioritized"] == comparison.mean_ci(diffs)
  assert merged["arms"]["standard"]["sampled_accuracy_after"]["mean"] == pytest.approx(0.18)
  # The curves follow the runs' new order.
  after = merged["curves"][comparison.HEADLINE]["values"][1]
  assert after == [r["sampled_accuracy_after"] for r in merged["runs"]]
  assert merged["config"]["num_seeds"] == 5 and merged["config"]["first_seed"] == 0
  assert [m["seeds"] for m in merged["merged"]] == [[2, 3, 4], [0, 1]]


@pytest.mark.parametrize("make_b,message", [
    (lambda: part([1, 2], [0.1, 0.1], [0.1, 0.1]), "seed 1 is in both"),
    (lambda: part([2], [0.1], [0.1], extra_digits=2), "differ in extra_digits"),
    (lambda: dict(part([2], [0.1], [0.1]), episodes=200), "differ in episodes"),
    (lambda: {k: v for k, v in part([2], [0.1], [0.1]).items() if k != "runs"}, "no per-run"),
])
def test_parts_of_other_experiments_are_refused(make_b, message):
  with pytest.raises(ValueError, match=message):
    merge_runs.merge([part([0, 1], [0.1, 0.1], [0.1, 0.1]), make_b()], ["a", "b"])


def test_a_curve_at_other_episodes_is_left_out():
  a, b = part([0], [0.1], [0.2]), part([1], [0.1], [0.2])
  b["curves"][comparison.HEADLINE]["episodes"] = [0, 50]
  assert merge_runs.merge([a, b], ["a", "b"])["curves"] == {}


def test_command_writes_summary_and_plot(tmp_path):
  paths = []
  for name, p in (("a", part([0, 1, 2], [0.1, 0.2, 0.3], [0.2, 0.2, 0.2])),
                  ("b", part([3, 4], [0.1, 0.3], [0.3, 0.1]))):
    paths.append(str(tmp_path / f"{name}.json"))
    with open(paths[-1], "w") as f:
      json.dump(p, f)
  out = tmp_path / "merged" / "summary.json"
  cmd = [sys.executable, "-m", "experiments.merge_runs", f"--summaries={','.join(paths)}",
         f"--out={out}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  assert line["seeds"] == 5 and "prioritized − standard, sampled accuracy" in proc.stdout
  with open(out) as f:
    assert {k: v for k, v in json.load(f).items() if k != "config"} == line
  assert os.path.getsize(line["plot"]) > 1000
  # Two parts sharing a seed: one line on stderr, status 2.
  proc = subprocess.run(cmd[:-2] + [f"--summaries={paths[0]},{paths[0]}", f"--out={out}"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "is in both" in proc.stderr
