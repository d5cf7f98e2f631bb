"""Tables, summaries and learning curves of RL comparisons between arms.

Shared by the experiments that compare arms (`prioritized_kl`, `beta_ablation`) and the Colab
notebook; it defines no flags, so that any of them may import it. The headline figure is the
accuracy of episodes sampled at τ on the fixed test problems (the paper's test reward); greedy
accuracy is beside it.
"""
from typing import NamedTuple

import numpy as np

from critical_kl import evaluation

HEADLINE = "sampled_accuracy"
FIGURES = (("sampled_accuracy", "sampled accuracy, N+k"), ("accuracy", "greedy accuracy, N+k"),
           ("in_distribution_accuracy", "greedy accuracy, 1..N"),
           ("critical_probability", "critical-token probability"))


class Outcomes(NamedTuple):
  """Every run's figures: what the tables, paired differences and summaries read. Built from a
  `finetune.FinetuneResult` or from the `runs` of saved summaries (`merge_runs`)."""
  arms: tuple[str, ...]  # arm names, in table order
  runs: list[tuple[str, int]]  # (arm name, seed) of every run
  before: dict[str, list[float]]  # figure -> [R], before RL
  after: dict[str, list[float]]  # figure -> [R], after RL


def outcomes(out) -> Outcomes:
  """The outcomes of a `finetune.FinetuneResult` (an `Outcomes` is returned as it is)."""
  if isinstance(out, Outcomes):
    return out
  return Outcomes(tuple(arm.name for arm in out.arms), list(out.runs),
                  {k: list(map(float, v)) for k, v in out.before.items()},
                  {k: list(map(float, v)) for k, v in out.after.items()})


def outcomes_of_runs(arms, records: list[dict]) -> Outcomes:
  """The outcomes of `per_run` records (each {"arm", "seed", "<figure>_before/_after"})."""
  runs = [(r["arm"], int(r["seed"])) for r in records]
  return Outcomes(tuple(arms), runs,
                  {name: [r[f"{name}_before"] for r in records] for name, _ in FIGURES},
                  {name: [r[f"{name}_after"] for r in records] for name, _ in FIGURES})


def mean_ci(values) -> dict:
  values = np.asarray(values, float)
  lo, hi = evaluation.bootstrap_ci(values) if values.size > 1 else (values[0], values[0])
  return dict(mean=float(values.mean()), ci95=[float(lo), float(hi)])


def _indices(o: Outcomes, arm: str) -> list[int]:
  return [i for i, (a, _) in enumerate(o.runs) if a == arm]


def summarize(out) -> dict:
  """Per arm: each figure before and after RL, mean and 95% CI over the arm's seeds."""
  o = outcomes(out)
  summary = {}
  for arm in o.arms:
    idx = _indices(o, arm)
    summary[arm] = {}
    for name, _ in FIGURES:
      summary[arm][f"{name}_before"] = mean_ci(np.take(o.before[name], idx))
      summary[arm][f"{name}_after"] = mean_ci(np.take(o.after[name], idx))
  return summary


def paired_difference(out, arm: str, name: str = HEADLINE, baseline: str = "standard") -> dict:
  """`arm` − `baseline` after RL on the same seed (same problems and keys), mean and 95% CI."""
  o = outcomes(out)
  after = np.asarray(o.after[name])
  names = np.array([a for a, _ in o.runs])
  seeds = np.array([s for _, s in o.runs])
  ours, theirs = after[names == arm], after[names == baseline]
  if not np.array_equal(seeds[names == arm], seeds[names == baseline]):
    raise ValueError(f"arms {arm} and {baseline} do not share their seeds")
  return mean_ci(ours - theirs)


def differences(out, name: str = HEADLINE, baseline: str = "standard") -> dict:
  """{arm: paired difference against `baseline`} for every arm but it and "standard"; empty
  without `baseline`."""
  o = outcomes(out)
  if baseline not in o.arms:
    return {}
  others = [arm for arm in o.arms if arm not in ("standard", baseline)]
  return {arm: paired_difference(o, arm, name, baseline) for arm in others}


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


def _curve_points(history: list[dict], o: Outcomes, name: str, episodes_per_collect: int):
  """(episodes [K], values [K, R]) of one figure: before RL, each periodic evaluation, after."""
  episodes, values = [0], [o.before[name]]
  for record in history:
    if "eval" in record:
      episodes.append(record["iteration"] * episodes_per_collect)
      values.append(record["eval"][name])
  episodes.append(history[-1]["iteration"] * episodes_per_collect if history else 0)
  values.append(o.after[name])
  return np.array(episodes), np.array(values, float)


def curves(history: list[dict], out, episodes_per_collect: int) -> dict:
  """{figure: {"episodes": [K], "values": [K][R]}}, runs in `out.runs` order: the test accuracy
  sampled at τ and the critical-token probability (before RL, each periodic evaluation, after) and
  the success of the collected episodes (each collect). What `plot_curves` draws, and what
  `merge_runs` joins for runs made apart."""
  o = outcomes(out)
  result = {}
  for name in (HEADLINE, "critical_probability"):
    x, values = _curve_points(history, o, name, episodes_per_collect)
    result[name] = dict(episodes=x.tolist(), values=values.tolist())
  if history:
    result["success"] = dict(
        episodes=[r["iteration"] * episodes_per_collect for r in history],
        values=[[run["success"] for run in r["runs"]] for r in history])
  return result


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


def plot_curves(curve_data: dict, out, path: str, temperature: float, extra_digits: int) -> None:
  """Three panels over training episodes, one curve per arm with a band over seeds: test accuracy
  sampled at τ (the paper's Figure 4), critical-token probability (Figure 7), training success.
  `curve_data` is `curves`' output."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  o = outcomes(out)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for ax, name in zip(axes, (HEADLINE, "critical_probability", "success")):
    if name not in curve_data:
      continue
    x, values = np.array(curve_data[name]["episodes"]), np.array(curve_data[name]["values"])
    for arm in o.arms:
      _band(ax, x, values[:, _indices(o, arm)], arm)
  titles = (f"test accuracy, sampled at τ = {temperature} (%)",
            "critical-token probability (%)", "success of collected episodes (%)")
  for ax, title in zip(axes, titles):
    ax.set_xlabel("training episodes")
    ax.set_title(title, fontsize=10)
  axes[0].legend(fontsize=8)
  seeds = len(_indices(o, o.arms[0]))
  band = "95% CI over seeds" if seeds > 2 else "min–max over seeds"
  fig.suptitle(f"RL on N+{extra_digits} digits, {seeds} seeds per arm (bands: {band})",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot(history: list[dict], out, config, path: str) -> None:
  """`plot_curves` of a run's history (`finetune.read_history`)."""
  plot_curves(curves(history, out, config.episodes_per_collect), out, path, config.temperature,
              config.extra_digits)


def per_run(out) -> list[dict]:
  """Every run's figures before and after RL: what `merge_runs` pairs by seed across workdirs."""
  o = outcomes(out)
  return [dict(arm=arm, seed=seed,
               **{f"{name}_{when}": float(values[name][i]) for name, _ in FIGURES
                  for when, values in (("before", o.before), ("after", o.after))})
          for i, (arm, seed) in enumerate(o.runs)]


def comparison_fields(out) -> dict:
  """The fields of a summary computed from the runs' figures alone: per-arm means and CIs, every
  run, and the paired differences (against standard on the headline and greedy accuracy, and
  against prioritized)."""
  o = outcomes(out)
  return dict(arms=summarize(o), runs=per_run(o), differences=differences(o),
              greedy_differences=differences(o, "accuracy"),
              prioritized_differences=differences(o, baseline="prioritized"))


def result_line(out, config, plot_path: str, history: list[dict] | None = None) -> dict:
  """The schema shared by the main job's final JSON line and `summary.json`; with `history`, the
  learning curves (`curves`) too."""
  extra = {} if history is None else dict(curves=curves(history, out, config.episodes_per_collect))
  return dict(**comparison_fields(out), seeds=config.num_seeds,
              episodes=config.num_iterations * config.episodes_per_collect,
              test_problems=config.eval_episodes, headline=HEADLINE,
              reference_selectivity=out.reference,
              matched_kl_factor=next((a.kl_scale for a in out.arms if a.kind == "matched"), None),
              seconds=round(out.seconds, 1), plot=plot_path, digits=out.task.digits,
              temperature=config.temperature, **extra)
