"""Merges RL comparisons made apart into one, paired by seed: more seeds for a powered run.

A run's problems and keys depend on its seed alone (and `seed`, which fixes the test problems),
so runs of the same config made in different workdirs with disjoint seeds (`--config.first_seed`)
are runs of one experiment. This reads their `summary.json` files, checks that they are, and
writes the summary of all their runs, in the schema of the main job's (`prioritized_kl`), with the
learning curves.

  python -m experiments.prioritized_kl --config=critical_kl/configs/prioritized_kl_full.py \
      --config.first_seed=10 --workdir=runs/prioritized_kl_full_10
  python -m experiments.merge_runs \
      --summaries=runs/prioritized_kl_full/summary.json,runs/prioritized_kl_full_10/summary.json \
      --out=runs/prioritized_kl_merged/summary.json --plot=runs/prioritized_kl_merged/curves.png

Prints the table of `prioritized_kl` and ends with the merged summary as one JSON line (without
its config). Exits with status 2 when the parts are not runs of one experiment (another config, arm
list or episode count) or share a run.
"""
import json
import os

from absl import app
from absl import flags

from experiments import _cli
from experiments import comparison

_SUMMARIES = flags.DEFINE_list("summaries", None, "summary.json files of the runs to merge.")
_OUT = flags.DEFINE_string("out", None, "Where to write the merged summary.json.")
_PLOT = flags.DEFINE_string("plot", "", "Where to write the merged learning curves (PNG); "
                            "'' for beside --out.")

# Config fields that may differ between the parts: they choose which seeds a part runs.
SEED_FIELDS = ("first_seed", "num_seeds")
# Summary fields every part must share.
SHARED_FIELDS = ("episodes", "test_problems", "headline", "digits", "temperature",
                 "matched_kl_factor")


def _check_parts(parts: list[dict], names: list[str]) -> None:
  """Raises ValueError unless the parts are runs of one experiment with disjoint seeds."""
  for part, name in zip(parts, names):
    if "runs" not in part:
      raise ValueError(f"{name} has no per-run figures (`runs`): it was written before they were "
                       f"saved; re-make it with this version")
  first, first_name = parts[0], names[0]
  for part, name in zip(parts[1:], names[1:]):
    keys = set(first["config"]) | set(part["config"])
    differ = sorted(k for k in keys - set(SEED_FIELDS)
                    if first["config"].get(k) != part["config"].get(k))
    differ += [k for k in SHARED_FIELDS if first.get(k) != part.get(k)]
    if list(first["arms"]) != list(part["arms"]):
      differ.append("arms")
    if differ:
      raise ValueError(f"{name} and {first_name} are not runs of one experiment: they differ in "
                       + ", ".join(differ))
  seen = {}
  for part, name in zip(parts, names):
    for run in part["runs"]:
      key = (run["arm"], run["seed"])
      if key in seen:
        raise ValueError(f"run {key[0]} seed {key[1]} is in both {seen[key]} and {name}")
      seen[key] = name


def _merged_curves(parts: list[dict], order: list[tuple[int, int]]) -> dict:
  """The curves every part has at the same episodes, with their runs in `order` ((part, run)
  pairs); a figure some part lacks, or has at other episodes, is left out."""
  result = {}
  for name in parts[0].get("curves", {}):
    if not all(name in p.get("curves", {}) and p["curves"][name]["episodes"] ==
               parts[0]["curves"][name]["episodes"] for p in parts):
      continue
    episodes = parts[0]["curves"][name]["episodes"]
    values = [[parts[p]["curves"][name]["values"][k][i] for p, i in order]
              for k in range(len(episodes))]
    result[name] = dict(episodes=episodes, values=values)
  return result


def merge(parts: list[dict], names: list[str], plot_path: str = "") -> dict:
  """The summary of the runs of every part (each a `summary.json`), runs sorted by arm then seed.

  Raises:
    ValueError: when the parts are not runs of one experiment, or share a run.
  """
  _check_parts(parts, names)
  arms = list(parts[0]["arms"])
  order = sorted(((p, i) for p, part in enumerate(parts) for i in range(len(part["runs"]))),
                 key=lambda pi: (arms.index(parts[pi[0]]["runs"][pi[1]]["arm"]),
                                 parts[pi[0]]["runs"][pi[1]]["seed"]))
  records = [parts[p]["runs"][i] for p, i in order]
  o = comparison.outcomes_of_runs(arms, records)
  seeds = sorted({r["seed"] for r in records})
  curves = _merged_curves(parts, order)
  config = dict(parts[0]["config"], num_seeds=len(seeds), first_seed=seeds[0])
  return dict(comparison.comparison_fields(o), seeds=len(seeds),
              **{k: parts[0].get(k) for k in SHARED_FIELDS},
              reference_selectivity=parts[0].get("reference_selectivity"),
              seconds=round(sum(p["seconds"] for p in parts), 1),
              plot=plot_path if curves else "", curves=curves,
              merged=[dict(summary=n, seeds=sorted({r["seed"] for r in p["runs"]}),
                           seconds=p["seconds"]) for p, n in zip(parts, names)],
              config=config)


def main(_):
  if not _SUMMARIES.value or len(_SUMMARIES.value) < 2 or not _OUT.value:
    raise app.UsageError("--summaries (two or more summary.json files) and --out are required")
  parts = []
  for path in _SUMMARIES.value:
    with open(path) as f:
      parts.append(json.load(f))
  plot_path = _PLOT.value or os.path.join(os.path.dirname(_OUT.value) or ".", "learning_curves.png")
  merged = merge(parts, _SUMMARIES.value, plot_path)  # a ValueError exits with status 2
  for path in (_OUT.value, plot_path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  o = comparison.outcomes_of_runs(list(merged["arms"]), merged["runs"])
  if merged["curves"]:
    comparison.plot_curves(merged["curves"], o, plot_path, merged["temperature"],
                           merged["config"]["extra_digits"])
  print(comparison.table(merged["arms"], o))
  with open(_OUT.value, "w") as f:
    json.dump(merged, f, indent=1)
  print(json.dumps({k: v for k, v in merged.items() if k != "config"}))


if __name__ == "__main__":
  _cli.run(main)
