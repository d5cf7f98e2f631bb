"""Standard vs prioritized KL penalty, RL on N + 1 digits from the shipped model (paper Fig. 4).

  python -m experiments.prioritized_kl                      # 5 seeds per arm, CPU-sized
  python -m experiments.prioritized_kl --config.num_seeds=10 --config.num_iterations=40 \
      --workdir=runs/prioritized_kl_long

Both arms run together (vmapped over arm × seed). Prints a table with means and 95% bootstrap
intervals over seeds, writes a learning-curve PNG and `summary.json` to --workdir, and ends with
one JSON line {"arms": {...}, "seeds": k, "episodes": e, "seconds": s, "plot": path}.
"""
import json
import os

from absl import flags
from ml_collections import config_flags
import numpy as np

from critical_kl import evaluation
from critical_kl import finetune
from experiments import _cli

_CONFIG = config_flags.DEFINE_config_file("config", _cli.config_path("prioritized_kl"),
                                          "RL config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/prioritized_kl",
                               "Directory for checkpoints, metrics, plot and summary.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete checkpoints already in --workdir.")

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


def main(_):
  config = _CONFIG.value
  arms = {"standard": 0.0, "prioritized": float(config.beta)}
  out = finetune.finetune(config, _WORKDIR.value, arms, overwrite=_OVERWRITE.value)
  history = finetune.read_history(_WORKDIR.value)
  summary = summarize(out, arms)
  print(table(summary, out))
  plot_path = os.path.join(_WORKDIR.value, "learning_curves.png")
  plot(history, arms, config, plot_path)
  result = dict(arms=summary, seeds=config.num_seeds,
                episodes=config.num_iterations * config.episodes_per_collect,
                seconds=round(out["seconds"], 1), plot=plot_path,
                accuracy_difference=paired_difference(out, "accuracy"),
                digits=out["task"].digits, temperature=config.temperature)
  with open(os.path.join(_WORKDIR.value, "summary.json"), "w") as f:
    json.dump(dict(result, config=config.to_dict()), f, indent=1)
  print(json.dumps(result))


if __name__ == "__main__":
  _cli.run(main)
