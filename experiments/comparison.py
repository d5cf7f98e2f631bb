"""Tables, summaries and learning curves of RL comparisons between arms.

Shared by the experiments that compare arms (`prioritized_kl`, `beta_ablation`) and the Colab
notebook; it defines no flags, so that any of them may import it. The headline figure is the
accuracy of episodes sampled at τ on the fixed test problems (the paper's test reward); greedy
accuracy is beside it.
"""
import numpy as np

from critical_kl import evaluation

HEADLINE = "sampled_accuracy"
FIGURES = (("sampled_accuracy", "sampled accuracy, N+k"), ("accuracy", "greedy accuracy, N+k"),
           ("in_distribution_accuracy", "greedy accuracy, 1..N"),
           ("critical_probability", "critical-token probability"))


def mean_ci(values) -> dict:
  values = np.asarray(values, float)
  lo, hi = evaluation.bootstrap_ci(values) if values.size > 1 else (values[0], values[0])
  return dict(mean=float(values.mean()), ci95=[float(lo), float(hi)])


def _arm_names(out) -> list[str]:
  return [arm.name for arm in out.arms]


def summarize(out) -> dict:
  """Per arm: each figure before and after RL, mean and 95% CI over the arm's seeds."""
  summary = {}
  for arm in _arm_names(out):
    idx = [i for i, (a, _) in enumerate(out.runs) if a == arm]
    summary[arm] = {}
    for name, _ in FIGURES:
      summary[arm][f"{name}_before"] = mean_ci(np.take(out.before[name], idx))
      summary[arm][f"{name}_after"] = mean_ci(np.take(out.after[name], idx))
  return summary


def paired_difference(out, arm: str, name: str = HEADLINE, baseline: str = "standard") -> dict:
  """`arm` − `baseline` after RL on the same seed (same problems and keys), mean and 95% CI."""
  after = np.asarray(out.after[name])
  names = np.array([a for a, _ in out.runs])
  seeds = np.array([s for _, s in out.runs])
  ours, theirs = after[names == arm], after[names == baseline]
  if not np.array_equal(seeds[names == arm], seeds[names == baseline]):
    raise ValueError(f"arms {arm} and {baseline} do not share their seeds")
  return mean_ci(ours - theirs)


def differences(out, name: str = HEADLINE, baseline: str = "standard") -> dict:
  """{arm: paired difference against `baseline`} for every arm but it and "standard"; empty
  without `baseline`."""
  names = _arm_names(out)
  if baseline not in names:
    return {}
  others = [arm for arm in names if arm not in ("standard", baseline)]
  return {arm: paired_difference(out, arm, name, baseline) for arm in others}


def _cell(x) -> str:
  return f"{100 * x['mean']:5.1f} [{100 * x['ci95'][0]:5.1f},{100 * x['ci95'][1]:5.1f}]"


def table(summary: dict, out) -> str:
  """One row per arm: each figure after RL; then the paired differences against standard."""
  lines = [f"{'after RL (before: ' + _cell(next(iter(summary.values()))[HEADLINE + '_before']).strip() + ')':34}"
           + "".join(f"{label:>28}" for _, label in FIGURES)]
  for arm, figures in summary.items():
    lines.append(f"{arm:34}" + "".join(f"{_cell(figures[name + '_after']):>28}"
                                       for name, _ in FIGURES))
  for baseline in ("standard", "prioritized"):
    for name in (HEADLINE, "accuracy"):
      for arm, diff in differences(out, name, baseline).items():
        lines.append(f"{arm} − {baseline}, {dict(FIGURES)[name]} (paired by seed): {_cell(diff)}")
  return "\n".join(lines)


def _curve_points(history: list[dict], out, name: str, episodes_per_collect: int):
  """(episodes [K], values [K, R]) of one figure: before RL, each periodic evaluation, after."""
  episodes, values = [0], [out.before[name]]
  for record in history:
    if "eval" in record:
      episodes.append(record["iteration"] * episodes_per_collect)
      values.append(record["eval"][name])
  episodes.append(history[-1]["iteration"] * episodes_per_collect if history else 0)
  values.append(out.after[name])
  return np.array(episodes), np.array(values)


def _band(ax, x, values, label) -> None:
  """Mean over seeds with its 95% normal-approximation band (± min/max with 2 seeds or fewer)."""
  mean = values.mean(axis=1)
  if values.shape[1] > 2:
    half = 1.96 * values.std(axis=1, ddof=1) / np.sqrt(values.shape[1])
    lo, hi = mean - half, mean + half
  else:
    lo, hi = values.min(axis=1), values.max(axis=1)
  ax.plot(x, 100 * mean, marker="o" if len(x) < 12 else None, label=label)
  ax.fill_between(x, 100 * lo, 100 * hi, alpha=0.2)


def plot(history: list[dict], out, config, path: str) -> None:
  """Three panels over training episodes, one curve per arm with a band over seeds: test accuracy
  sampled at τ (the paper's Figure 4), critical-token probability (Figure 7), training success."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  per_collect = config.episodes_per_collect
  for arm in _arm_names(out):
    idx = [i for i, (a, _) in enumerate(out.runs) if a == arm]
    for ax, name in zip(axes[:2], (HEADLINE, "critical_probability")):
      x, values = _curve_points(history, out, name, per_collect)
      _band(ax, x, values[:, idx], arm)
    if history:
      x = np.array([r["iteration"] for r in history]) * per_collect
      success = np.array([[r["runs"][i]["success"] for i in idx] for r in history])
      _band(axes[2], x, success, arm)
  titles = (f"test accuracy, sampled at τ = {config.temperature} (%)",
            "critical-token probability (%)", "success of collected episodes (%)")
  for ax, title in zip(axes, titles):
    ax.set_xlabel("training episodes")
    ax.set_title(title, fontsize=10)
  axes[0].legend(fontsize=8)
  band = "95% CI over seeds" if config.num_seeds > 2 else "min–max over seeds"
  fig.suptitle(f"RL on N+{config.extra_digits} digits, {config.num_seeds} seeds per arm "
               f"(bands: {band})", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def per_run(out) -> list[dict]:
  """Every run's figures before and after RL: what `merge_runs` pairs by seed across workdirs."""
  return [dict(arm=arm, seed=seed,
               **{f"{name}_{when}": float(values[name][i]) for name, _ in FIGURES
                  for when, values in (("before", out.before), ("after", out.after))})
          for i, (arm, seed) in enumerate(out.runs)]


def curves(history: list[dict], out, config) -> dict:
  """{figure: {"episodes": [K], "values": [K][R]}} of the learning curves, runs in `out.runs`
  order: what `merge_runs` needs to draw the curves of runs made apart."""
  result = {}
  for name in (HEADLINE, "critical_probability"):
    x, values = _curve_points(history, out, name, config.episodes_per_collect)
    result[name] = dict(episodes=x.tolist(), values=np.asarray(values, float).tolist())
  return result


def result_line(out, config, plot_path: str, history: list[dict] | None = None) -> dict:
  """The schema shared by the main job's final JSON line and `summary.json`; with `history`, the
  learning curves (`curves`) too."""
  extra = {} if history is None else dict(curves=curves(history, out, config))
  return dict(**extra,arms=summarize(out), seeds=config.num_seeds, runs=per_run(out),
              episodes=config.num_iterations * config.episodes_per_collect,
              test_problems=config.eval_episodes, headline=HEADLINE,
              differences=differences(out), greedy_differences=differences(out, "accuracy"),
              prioritized_differences=differences(out, baseline="prioritized"),
              reference_selectivity=out.reference,
              matched_kl_factor=next((a.kl_scale for a in out.arms if a.kind == "matched"), None),
              seconds=round(out.seconds, 1), plot=plot_path, digits=out.task.digits,
              temperature=config.temperature)
