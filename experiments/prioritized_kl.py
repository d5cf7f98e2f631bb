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

from critical_kl import distributed
from critical_kl import finetune
from experiments import _cli
from experiments.comparison import paired_difference, plot, summarize, table

_CONFIG = config_flags.DEFINE_config_file("config", _cli.config_path("prioritized_kl"),
                                          "RL config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/prioritized_kl",
                               "Directory for checkpoints, metrics, plot and summary.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete checkpoints already in --workdir.")
_cli.define_distributed_flags()

def main(_):
  config = _CONFIG.value
  arms = {"standard": 0.0, "prioritized": float(config.beta)}
  out = finetune.finetune(config, _WORKDIR.value, arms, overwrite=_OVERWRITE.value)
  if not distributed.is_main():
    return  # the main process writes the table, plot and summary
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
