"""Prioritized vs standard KL with the controls, RL on N + 1 digits from the shipped model
(paper Figures 4 and 7, SPEC §7.4 and §7.6).

  python -m experiments.prioritized_kl                      # the CPU-sized default
  python -m experiments.prioritized_kl --config=critical_kl/configs/prioritized_kl_full.py \
      --workdir=runs/prioritized_kl_full                    # powered to resolve 5 points

The arms (`--config.arms`, default standard, prioritized, matched, oracle, no_kl; see
critical_kl/arms.py) run together, vmapped over arm × seed, with the same seeds, problems and
keys. Prints a table with means and 95% bootstrap intervals over seeds and the paired differences
against standard; writes the learning curves (PNG) and `summary.json` to --workdir; ends with one
JSON line: {"arms": {...}, "differences": {arm: {"mean", "ci95"}}, "test_problems": n,
"seeds": k, "episodes": e, "seconds": s, "plot": path, ...}, the schema of `summary.json` too.
"""
import json
import os

from absl import flags
from ml_collections import config_flags

from critical_kl import distributed
from critical_kl import finetune
from experiments import _cli
from experiments import comparison

_CONFIG = config_flags.DEFINE_config_file("config", _cli.config_path("prioritized_kl"),
                                          "RL config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/prioritized_kl",
                               "Directory for checkpoints, metrics, plot and summary.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete checkpoints already in --workdir.")
_RESUME_PREVIOUS = _cli.define_resume_flag()
_cli.define_distributed_flags()


def main(_):
  config = _CONFIG.value
  out = finetune.finetune(config, _WORKDIR.value, overwrite=_OVERWRITE.value,
                          resume_previous=_RESUME_PREVIOUS.value)
  if not distributed.is_main():
    return  # the main process writes the table, plot and summary
  history = finetune.read_history(_WORKDIR.value)
  plot_path = os.path.join(_WORKDIR.value, "learning_curves.png")
  comparison.plot(history, out, config, plot_path)
  result = comparison.result_line(out, config, plot_path, history)
  print(comparison.table(result["arms"], out))
  with open(os.path.join(_WORKDIR.value, "summary.json"), "w") as f:
    json.dump(dict(result, config=config.to_dict()), f, indent=1)
  print(json.dumps(result))


if __name__ == "__main__":
  _cli.run(main)
