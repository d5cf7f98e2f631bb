"""The main experiment at CPU scale: prioritized KL (β = 150) against standard KL and the controls,
RL on N + 1 digits.

All arms are identical but for the token weights of the KL penalty or α (critical_kl/arms.py);
α = 5 as in the paper's prioritized-KL experiment. Sized for well under 15 minutes on a 2-core CPU
(about 8), with 2 seeds per arm: enough to run the comparison end to end, not to resolve it; the
powered version is `prioritized_kl_full.py`.
"""
from critical_kl.configs import rl_default


def get_config():
  c = rl_default.get_config()
  c.arms = "standard,prioritized,matched,oracle,no_kl"
  c.num_seeds = 2
  c.kl_coef = 5.0
  c.beta = 150.0
  # [ours] 5 arms × 2 seeds within 15 minutes on a 2-core CPU: 13 collects of 10 episodes, in 2
  # minibatches of 5 whole episodes (2 Adam steps per collect), no evaluation between before and
  # after. Each collect of the 10 runs costs about 12-20 s, the evaluation of the 10 runs after RL
  # about 3 minutes (docs/results.md, section 3), so 2 seeds and 130 episodes per run still leave
  # it far from powered: `prioritized_kl_full.py` is.
  c.episodes_per_collect = 10
  c.num_minibatches = 2
  c.num_iterations = 13
  c.eval_episodes = 100  # [paper] 100 test episodes
  c.eval_every = 0
  c.critical_eval_problems = 32
  c.checkpoint_every = 4
  return c
