"""Calibrating the update for standard KL (the mechanism's control arm): learning rate × minibatch
size, on the collects of the powered run (20 episodes).

One vmapped program per minibatch size (a static shape); the learning rates are arms of it
(`standard+lr=...`, a leaf of each run's optimizer state). Defaults: minibatches of 5 episodes
(4 Adam steps per collect) at 1e-5, 3e-5 and 1e-4; for one episode per Adam step (20 steps per
collect), run

  python -m experiments.prioritized_kl --config=critical_kl/configs/calibration.py \
      --workdir=runs/calibration_1 --config.num_minibatches=20 \
      --config.arms=standard+lr=3e-6,standard+lr=1e-5,standard+lr=3e-5

The setting to keep is the one where standard KL improves fastest (sampled test accuracy and the
success of collected episodes) without losing in-distribution accuracy (docs/results.md).
"""
from critical_kl.configs import prioritized_kl


def get_config():
  c = prioritized_kl.get_config()
  c.arms = "standard+lr=1e-5,standard+lr=3e-5,standard+lr=1e-4"
  c.num_seeds = 2
  c.episodes_per_collect = 20
  c.num_minibatches = 4
  c.num_iterations = 15  # 300 episodes per run
  c.eval_episodes = 100
  c.eval_every = 5
  c.checkpoint_every = 5
  return c
