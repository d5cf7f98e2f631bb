"""RL fine-tuning of the pre-trained model with a standard or prioritized KL penalty (one arm).

  python -m experiments.rl_finetune --workdir=runs/rl_prioritized
  python -m experiments.rl_finetune --workdir=runs/rl_standard --config.prioritized=False \
      --config.num_seeds=3 --config.num_iterations=40

Seeds run together (vmapped). Writes `metrics.jsonl` (one JSON line per iteration, every run) and
Orbax checkpoints to --workdir; started again with the same --workdir, a run resumes exactly.
Several devices: `--config.sharding.data=0`; several hosts: `--distributed` (see BUILD.md).
"""
import json

from absl import flags
from ml_collections import config_flags

from critical_kl import distributed
from critical_kl import finetune
from critical_kl import rl
from experiments import _cli

_CONFIG = config_flags.DEFINE_config_file("config", _cli.config_path("rl_default"),
                                          "RL config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.",
                               required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete checkpoints already in --workdir.")
_cli.define_distributed_flags()


def main(_):
  config = _CONFIG.value
  arm = "prioritized" if config.prioritized else "standard"
  out = finetune.finetune(config, _WORKDIR.value, {arm: rl.run_beta(config)},
                          overwrite=_OVERWRITE.value)
  if not distributed.is_main():
    return
  summary = dict(arm=arm, seeds=config.num_seeds, before=out["before"], after=out["after"],
                 seconds=round(out["seconds"], 1))
  print(json.dumps(summary))


if __name__ == "__main__":
  _cli.run(main)
