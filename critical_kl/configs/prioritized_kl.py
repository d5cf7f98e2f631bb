"""The main experiment at CPU scale: standard vs prioritized KL (β = 150) on N + 1 digits.

Both arms are identical but for the token weights of the KL penalty; α = 5 as in the paper's
prioritized-KL experiment. Sized to finish in about 15 minutes on a 2-core CPU.
"""
from critical_kl.configs import rl_default


def get_config():
  c = rl_default.get_config()
  c.num_seeds = 5
  c.kl_coef = 5.0
  c.beta = 150.0
  c.num_iterations = 10
  c.checkpoint_every = 5
  return c
