"""The main experiment at CPU scale: prioritized KL (β = 150) against standard KL and the controls,
RL on N + 1 digits.

All arms are identical but for the token weights of the KL penalty or α (critical_kl/arms.py);
α = 5 as in the paper's prioritized-KL experiment. Sized for about 15 minutes on a 2-core CPU,
which buys 2 seeds per arm: enough to run the comparison end to end, not to resolve it; the
powered version is `prioritized_kl_full.py`.
"""
from critical_kl.configs import rl_default


def get_config():
  c = rl_default.get_config()
  c.arms = "standard,prioritized,matched,oracle,no_kl"
  c.num_seeds = 2
  c.kl_coef = 5.0
  c.beta = 150.0
  # [ours] 5 arms × 2 seeds on a 2-core CPU in about 15 minutes: smaller collects than the
  # paper's 50 episodes; minibatches of 5 episodes, so that each collect gives 4 Adam steps
  # (docs/results.md, section 3).
  c.episodes_per_collect = 20
  c.num_minibatches = 4
  c.num_iterations = 20
  c.eval_episodes = 100  # [paper] 100 test episodes
  c.eval_every = 10  # one learning-curve point between before and after
  c.critical_eval_problems = 32
  c.checkpoint_every = 3
  return c
