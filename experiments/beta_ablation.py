"""β ablation of the prioritized KL penalty (paper Figure 6, SPEC §7.5): one arm per β.

  python -m experiments.beta_ablation --config=critical_kl/configs/paper_beta_ablation.py \
      --workdir=runs/paper_beta_ablation
  python -m experiments.beta_ablation --betas=0,150,500 --config.num_seeds=2 \
      --workdir=runs/beta_small     # CPU-sized (default config), with the standard KL as β = 0

The arms are named "prioritized+beta=<β>" (critical_kl/arms.py) and run together through
`finetune.finetune` (vmapped over β × seed), exactly like the arms of `prioritized_kl`;
`--config.sharding` and `--distributed` spread them over devices and hosts in the same way. Prints one row per β (means and 95% bootstrap
intervals over seeds after RL), writes a learning-curve PNG and `summary.json` to --workdir, and
ends with one JSON line {"arms": {...}, "seeds": k, "episodes": e, "seconds": s, "plot": path}.
"""
import json
import os

from absl import flags
from ml_collections import config_flags

from critical_kl import distributed
from critical_kl import finetune
from critical_kl.configs import paper_beta_ablation
from experiments import _cli
from experiments import comparison

_CONFIG = config_flags.DEFINE_config_file("config", _cli.config_path("prioritized_kl"),
                                          "RL config file.", lock_config=True)
_BETAS = flags.DEFINE_list("betas", None, "β of each arm (default: the config's `betas` field, "
                           "else the paper's nine values); 0 is the standard KL penalty.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/beta_ablation",
                               "Directory for checkpoints, metrics, plot and summary.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete checkpoints already in --workdir.")
_RESUME_PREVIOUS = _cli.define_resume_flag()
_cli.define_distributed_flags()


def arms_of(betas) -> str:
  """The arm list "prioritized+beta=<β>,..." in the given order; refuses an empty, repeated or
  negative list."""
  try:
    betas = [float(b) for b in betas]
  except ValueError:
    raise ValueError(f"betas must be numbers, got {list(betas)}") from None
  if not betas or len(set(betas)) != len(betas) or min(betas) < 0:
    raise ValueError(f"betas must be distinct values >= 0, got {betas}")
  return ",".join(f"prioritized+beta={b:g}" for b in betas)


def table(summary: dict) -> str:
  """One row per arm, one column per figure after RL: mean [95% CI] in percent."""
  cell = lambda x: f"{100 * x['mean']:5.1f} [{100 * x['ci95'][0]:5.1f},{100 * x['ci95'][1]:5.1f}]"
  lines = [f"{'after RL':24}" + "".join(f"{label:>30}" for _, label in comparison.FIGURES)]
  for arm, figures in summary.items():
    lines.append(f"{arm:24}" + "".join(f"{cell(figures[name + '_after']):>30}"
                                       for name, _ in comparison.FIGURES))
  return "\n".join(lines)


def main(_):
  config = _CONFIG.value
  # Config files without a `betas` field (e.g. prioritized_kl.py) get the paper's list.
  config.arms = arms_of(_BETAS.value or config.get("betas", paper_beta_ablation.PAPER_BETAS))
  out = finetune.finetune(config, _WORKDIR.value, overwrite=_OVERWRITE.value,
                          resume_previous=_RESUME_PREVIOUS.value)
  if not distributed.is_main():
    return  # the main process writes the table, plot and summary
  plot_path = os.path.join(_WORKDIR.value, "learning_curves.png")
  history = finetune.read_history(_WORKDIR.value)
  comparison.plot(history, out, config, plot_path)
  result = comparison.result_line(out, config, plot_path, history)
  print(table(result["arms"]))
  with open(os.path.join(_WORKDIR.value, "summary.json"), "w") as f:
    json.dump(dict(result, config=config.to_dict()), f, indent=1)
  print(json.dumps(result))


if __name__ == "__main__":
  _cli.run(main)
