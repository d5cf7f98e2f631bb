"""Paper scale, SPEC §7.3: RL on N + 2 digits from the 85M model pre-trained on N, standard KL.

N is the config string; one run per pre-training level:

  python -m experiments.rl_finetune \
      --config=critical_kl/configs/paper_pretraining_levels.py:7 --workdir=runs/paper_levels_7

(and likewise :9, :11, :13). Each loads the model of `paper_pretrain.py:N` from
runs/paper_pretrain_{N}/model. [paper] α = 10, standard KL (all token weights 1), τ = 2; the rest
as in `paper_prioritized_kl.py`, including its uncalibrated learning rate. Seeds: [ours] 5, the
paper does not state them for this figure.
"""
import ml_collections

from critical_kl.configs import paper_pretrain
from critical_kl.configs import paper_prioritized_kl


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  n = paper_pretrain.parse_digits(arg)
  c = paper_prioritized_kl.get_config()
  c.checkpoint = paper_pretrain.model_dir(n)
  c.extra_digits = 2
  c.kl_coef = 10.0
  c.arms = "standard"
  c.num_seeds = 5
  return c
