"""Pre-trains a GPT on 1..N-digit scratchpad addition.

  python -m experiments.pretrain --workdir=runs/pretrain
  python -m experiments.pretrain --config=critical_kl/configs/pretrain_default.py \
      --config.num_steps=300 --workdir=runs/short

A run killed midway resumes from its latest checkpoint when started again with the same workdir;
`--overwrite` starts afresh instead. `--export` writes the final parameters as a small model
directory (what `evaluate --checkpoint` and the RL experiments load).
"""
import os

from absl import flags
from ml_collections import config_flags

from critical_kl import checkpoints
from critical_kl import evaluation
from critical_kl import pretrain
from experiments import _cli

_CONFIG = config_flags.DEFINE_config_file("config", _cli.config_path("pretrain_default"),
                                          "Pre-training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete checkpoints already in --workdir.")
_EXPORT = flags.DEFINE_string("export", None, "Write the final model to this new directory.")


def main(_):
  config = _CONFIG.value
  if _EXPORT.value and os.path.exists(_EXPORT.value) and not _OVERWRITE.value:
    raise ValueError(f"--export directory {_EXPORT.value} exists; add --overwrite to replace it")
  state = pretrain.train(config, _WORKDIR.value, overwrite=_OVERWRITE.value)
  gpt = pretrain.model_config(config)
  n = config.pretrain_max_digits
  results = [evaluation.evaluate_suite(state["params"], gpt, d, "varying",
                                       config.eval_num_examples, seed=config.seed)
             for d in (n, n + 1)]
  print(evaluation.format_table(results))
  if _EXPORT.value:
    checkpoints.export(_EXPORT.value, state["params"], pretrain.saved_config(config),
                       overwrite=_OVERWRITE.value)
    print(f"exported the model to {_EXPORT.value}")


if __name__ == "__main__":
  _cli.run(main)
