"""Tables, summaries and learning-curve plots of RL comparisons between arms (named β values).

Shared by the experiments that compare arms (`prioritized_kl`, `beta_ablation`) and the Colab
notebook; it defines no flags, so that any of them may import it.
"""
import numpy as np

from critical_kl import evaluation

FIGURES = (("accuracy", "greedy accuracy, N+k"), ("sampled_accuracy", "sampled accuracy, N+k"),
           ("in_distribution_accuracy", "greedy accuracy, 1..N"),
           ("critical_probability", "critical-token probability"))


def mean_ci(values) -> dict:
  values = np.asarray(values, float)
  lo, hi = evaluation.bootstrap_ci(values) if values.size > 1 else (values[0], values[0])
  return dict(mean=float(values.mean()), ci95=[float(lo), float(hi)])


def summarize(out: dict, arms) -> dict:
  """Per arm: each figure before and after RL, mean and 95% CI over the arm's seeds."""
  summary = {}
  for arm in arms:
    idx = [i for i, (a, _) in enumerate(out["runs"]) if a == arm]
    summary[arm] = {}
    for name, _ in FIGURES:
      summary[arm][f"{name}_before"] = mean_ci(np.take(out["before"][name], idx))
      summary[arm][f"{name}_after"] = mean_ci(np.take(out["after"][name], idx))
  return summary


def paired_difference(out: dict, name: str) -> dict:
  """prioritized − standard on the same seed (same problems and keys), mean and 95% CI."""
  after = np.asarray(out["after"][name])
  arms = np.array([a for a, _ in out["runs"]])
  return mean_ci(after[arms == "prioritized"] - after[arms == "standard"])


def table(summary: dict, out: dict) -> str:
  cell = lambda x: f"{100 * x['mean']:5.1f} [{100 * x['ci95'][0]:5.1f},{100 * x['ci95'][1]:5.1f}]"
  lines = [f"{'':30}" + "".join(f"{arm:>44}" for arm in summary),
           f"{'':30}" + f"{'before':>22}{'after':>22}" * len(summary)]
  for name, label in FIGURES:
    row = f"{label:30}"
    for arm in summary:
      row += f"{cell(summary[arm][name + '_before']):>22}{cell(summary[arm][name + '_after']):>22}"
    lines.append(row)
  if {"standard", "prioritized"} <= set(summary):
    diff = paired_difference(out, "accuracy")
    lines.append(f"prioritized − standard, greedy accuracy after (paired by seed): {cell(diff)}")
  return "\n".join(lines)


def plot(history: list[dict], arms, config, path: str) -> None:
  """Training success (sampled at τ) per iteration, mean ± min/max over seeds, for each arm."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  episodes = np.array([r["iteration"] for r in history]) * config.episodes_per_collect
  for arm in arms:
    success = np.array([[run["success"] for run in r["runs"] if run["arm"] == arm]
                        for r in history])
    ax.plot(episodes, 100 * success.mean(axis=1), label=arm)
    ax.fill_between(episodes, 100 * success.min(axis=1), 100 * success.max(axis=1), alpha=0.2)
  ax.set_xlabel("training episodes")
  ax.set_ylabel(f"success of collected episodes (%), τ = {config.temperature}")
  ax.set_title(f"RL on N+{config.extra_digits} digits, {config.num_seeds} seeds per arm")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
