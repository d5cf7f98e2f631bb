"""The main experiment powered to resolve 5 points: 10 seeds per arm, 400 test problems, 1,000
episodes per run, learning curves every 100 episodes.

  python -m experiments.prioritized_kl --config=critical_kl/configs/prioritized_kl_full.py \
      --workdir=runs/prioritized_kl_full

Hours on a 2-core CPU: it checkpoints every 2 collects, and the same command resumes it. Add
seeds (`--config.num_seeds=`, in a fresh workdir: every seed's problems and keys depend on the
seed alone, so runs made apart stay paired) until the half-width of the prioritized − standard
paired 95% interval on the sampled accuracy is at most 5 points.
"""
from critical_kl.configs import prioritized_kl


def get_config():
  c = prioritized_kl.get_config()
  c.num_seeds = 10
  c.episodes_per_collect = 20
  c.num_minibatches = 4
  c.num_iterations = 50  # 1,000 episodes per run
  c.eval_episodes = 400
  c.eval_every = 5
  c.critical_eval_problems = 64
  c.checkpoint_every = 2
  return c
