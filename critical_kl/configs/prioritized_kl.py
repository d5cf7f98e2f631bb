"""The main experiment at CPU scale: standard vs prioritized KL (β = 150) on N + 1 digits.

Both arms are identical but for the token weights of the KL penalty; α = 5 as in the paper's
prioritized-KL experiment. Sized for about 15 minutes on a 2-core CPU.
"""
from critical_kl.configs import rl_default


def get_config():
  c = rl_default.get_config()
  c.num_seeds = 5
  c.kl_coef = 5.0
  c.beta = 150.0
  # [ours] 2 arms × 5 seeds on a 2-core CPU in about 15 minutes: smaller collects than the
  # paper's 50 episodes; minibatches of 5 episodes, so that each collect gives 4 Adam steps
  # (docs/results.md, section 3).
  c.episodes_per_collect = 20
  c.num_minibatches = 4
  c.num_iterations = 20  # 26-29 s per collect for the 10 runs on 2 cores (docs/results.md)
  c.eval_episodes = 100  # [paper] 100 test episodes
  c.critical_eval_problems = 32
  c.checkpoint_every = 3
  return c
