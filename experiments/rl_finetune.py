"""RL fine-tuning of the pre-trained model, one arm or several, every seed of each.

  python -m experiments.rl_finetune --workdir=runs/rl_prioritized
  python -m experiments.rl_finetune --workdir=runs/rl_standard --config.arms=standard \
      --config.num_seeds=3 --config.num_iterations=40

Runs advance together (vmapped). Writes `metrics.jsonl` (one JSON line per iteration, every run)
and Orbax checkpoints to --workdir; started again with the same --workdir, a run resumes exactly.
Ends with one JSON line of the figures before and after RL, per run.
Several devices: `--config.sharding.data=0`; several hosts: `--distributed` (see BUILD.md).
"""
import json

from absl import flags
from ml_collections import config_flags

from critical_kl import distributed
from critical_kl import finetune
from experiments import _cli

_CONFIG = config_flags.DEFINE_config_file("config", _cli.config_path("rl_default"),
                                          "RL config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.",
                               required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete checkpoints already in --workdir.")
_RESUME_PREVIOUS = _cli.define_resume_flag()
_cli.define_distributed_flags()


def main(_):
  config = _CONFIG.value
  out = finetune.finetune(config, _WORKDIR.value, overwrite=_OVERWRITE.value,
                          resume_previous=_RESUME_PREVIOUS.value)
  if not distributed.is_main():
    return
  summary = dict(arms=[arm.name for arm in out.arms], runs=out.runs, seeds=config.num_seeds,
                 before=out.before, after=out.after, seconds=round(out.seconds, 1))
  print(json.dumps(summary))


if __name__ == "__main__":
  _cli.run(main)
