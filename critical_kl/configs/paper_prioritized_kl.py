"""Paper scale, SPEC §7.4 and §7.6: standard vs prioritized KL and the controls (matched, oracle,
no KL), 85M model pre-trained on N = 7, RL on 8 digits.

  python -m experiments.prioritized_kl --config=critical_kl/configs/paper_prioritized_kl.py \
      --workdir=runs/paper_prioritized_kl

Needs the model of `paper_pretrain.py:7` exported to runs/paper_pretrain_7/model.
[paper] α = 5, β = 150, τ = 2, τ_c = 4, 50 episodes per collect, one update pass, 100 test
episodes, c_v = 0.1, c_e = 0.0005, Ĵ = negentropy_max_prob, k2 estimator; 10 seeds per arm.
[ours] Whole-episode minibatches (10 episodes each) instead of the authors' 2-token ones, so the
paper's learning rate of 1e-6 would barely move the model: 1e-5, a third of what the CPU-sized
calibration chose (docs/results.md) since larger models usually want smaller steps. It is not
calibrated at this scale; a short sweep (e.g. 3e-6, 1e-5, 3e-5 on 2 seeds) is the first thing to
run. The number of collects is [ours] too: the paper does not state it.
"""
import ml_collections

from critical_kl.configs import paper_pretrain
from critical_kl.configs import rl_default

PRETRAIN_DIGITS = 7


def get_config() -> ml_collections.ConfigDict:
  c = rl_default.get_config()
  c.checkpoint = paper_pretrain.model_dir(PRETRAIN_DIGITS)
  c.extra_digits = 1
  c.num_seeds = 10
  c.num_iterations = 100  # 5,000 episodes per run
  c.episodes_per_collect = 50
  c.num_minibatches = 5
  c.learning_rate = 1e-5
  c.temperature = 2.0
  c.certainty_temperature = 4.0
  c.certainty_method = "negentropy_max_prob"
  c.estimator = "k2"
  c.kl_coef = 5.0
  c.arms = "standard,prioritized,matched,oracle,no_kl"
  c.beta = 150.0
  c.value_coef = 0.1
  c.entropy_coef = 0.0005
  c.eval_episodes = 100
  c.eval_every = 10
  c.critical_eval_problems = 64
  c.checkpoint_every = 5
  return c
