"""Paper scale, SPEC §7.5: the β ablation of the prioritized KL penalty, 9 seeds per β.

  python -m experiments.beta_ablation --config=critical_kl/configs/paper_beta_ablation.py \
      --workdir=runs/paper_beta_ablation

Everything else as in `paper_prioritized_kl.py` (85M model pre-trained on N = 7, RL on 8 digits,
α = 5). All (β, seed) runs advance together; when they do not fit in memory, run a few β at a time
in separate work directories, e.g. `--betas=10,50`: run s of every β sees the same
problems and starts from the same key, so runs made apart stay paired by seed. β = 0 is the
standard KL penalty, should a baseline be wanted beside the ablation.
"""
import ml_collections

from critical_kl.configs import paper_prioritized_kl

# [paper] Figure 6.
PAPER_BETAS = (10.0, 50.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0, 10000.0)


def get_config() -> ml_collections.ConfigDict:
  c = paper_prioritized_kl.get_config()
  c.betas = PAPER_BETAS
  c.num_seeds = 9
  return c
