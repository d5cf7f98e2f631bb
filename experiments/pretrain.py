"""Pre-trains a GPT on 1..N-digit scratchpad addition.

  python -m experiments.pretrain --workdir=runs/pretrain
  python -m experiments.pretrain --config=critical_kl/configs/pretrain_default.py \
      --config.num_steps=300 --workdir=runs/short

A run killed midway resumes from its latest checkpoint when started again with the same workdir;
`--overwrite` starts afresh instead. `--export` writes the final parameters as a small model
directory (what `evaluate --checkpoint` and the RL experiments load).

Several devices: `--config.sharding.data=0` (see critical_kl/sharding.py); several hosts: the same
command on every host with `--distributed` (see BUILD.md, "Several devices and hosts").
"""
import os

import jax
from absl import flags
from ml_collections import config_flags

from critical_kl import checkpoints
from critical_kl import distributed
from critical_kl import evaluation
from critical_kl import pretrain
from experiments import _cli

_CONFIG = config_flags.DEFINE_config_file("config", _cli.config_path("pretrain_default"),
                                          "Pre-training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete checkpoints already in --workdir.")
_EXPORT = flags.DEFINE_string("export", None, "Write the final model to this new directory.")
_RESUME_PREVIOUS = _cli.define_resume_flag()
_cli.define_distributed_flags()


def main(_):
  config = _CONFIG.value
  if _EXPORT.value and os.path.exists(_EXPORT.value) and not _OVERWRITE.value:
    raise ValueError(f"--export directory {_EXPORT.value} exists; add --overwrite to replace it")
  state = pretrain.train(config, _WORKDIR.value, overwrite=_OVERWRITE.value,
                         resume_previous=_RESUME_PREVIOUS.value)
  params = distributed.host_local(state["params"])  # a collective: every process calls it
  if (config.sharding.data, config.sharding.params) != (1, 1):
    # Plain host arrays: the exported model loads on any number of devices.
    params = jax.device_get(params)
  gpt = pretrain.model_config(config)
  n = config.pretrain_max_digits
  if distributed.is_main():
    members = config.get("ensemble_members", 0)
    for k in range(max(members, 1)):
      model = pretrain.member_params(params, k) if members else params
      if members:
        print(f"member {k}:")
      results = [evaluation.evaluate_suite(model, gpt, d, "varying", config.eval_num_examples,
                                           seed=config.seed)
                 for d in (n, n + 1)]
      print(evaluation.format_table(results))
  if _EXPORT.value:
    # Every process takes part in the save (Orbax synchronizes them); the main one writes.
    checkpoints.export(_EXPORT.value, params, pretrain.saved_config(config),
                       overwrite=_OVERWRITE.value)
    if distributed.is_main():
      print(f"exported the model to {_EXPORT.value}")


if __name__ == "__main__":
  _cli.run(main)
