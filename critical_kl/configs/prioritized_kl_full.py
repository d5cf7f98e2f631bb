"""The main experiment powered to resolve 5 points: 10 seeds per arm (more are added in parts),
400 test problems, 1,000 episodes per run, learning curves at 0, 500 and 1,000 episodes.

  python -m experiments.prioritized_kl --config=critical_kl/configs/prioritized_kl_full.py \
      --workdir=runs/prioritized_kl_full

Four arms: `no_kl` is left out. It collapsed to 0% (in distribution too) within a few hundred
episodes in every run measured (docs/results.md, section 3), and 10 more runs of it would cost a
fifth of the compute for a settled answer; add it back with `--config.arms=...,no_kl`.

The update is the one calibrated for standard KL (docs/results.md, "Calibrated updates"): Adam at
3e-5 on minibatches of 5 whole episodes, 4 steps per 20-episode collect.

Time on a 2-core CPU (docs/results.md, section 3; AMD EPYC, nothing else running): the two arms
standard and prioritized (`--config.arms=standard,prioritized`) of seeds 0-9 (20 runs) took 1 h
54 min, at 88-97 s per collect, with evaluations of 84 s before, 11 minutes during and 27 minutes
after RL; the four arms take about twice that. The cost is about in proportion to the runs (a part
of 4 seeds, 8 runs, took 49 minutes at about 40 s per collect), so seeds may be split into parts
that fit a working stretch. It checkpoints every 2 collects, and the same command resumes it
(`--resume_previous` if the last checkpoint was cut short). Add seeds in another workdir with
`--config.first_seed=` (every seed's problems and keys depend on the seed alone, so runs made apart
stay paired), then join the parts with `python -m experiments.merge_runs
--summaries=A/summary.json,B/summary.json --out=...`, until the half-width of the prioritized -
standard paired 95% interval on the sampled accuracy is at most 5 points: the committed summary
(`docs/runs/prioritized_kl_full/summary.json`) merges seeds 0-25, made in parts this way (26 seeds,
a count fixed from the spread of the first 18; half-width 4.5 points).
"""
from critical_kl.configs import prioritized_kl


def get_config():
  c = prioritized_kl.get_config()
  c.arms = "standard,prioritized,matched,oracle"
  c.num_seeds = 10
  c.episodes_per_collect = 20
  c.num_minibatches = 4
  c.learning_rate = 3e-5
  c.num_iterations = 50  # 1,000 episodes per run
  c.eval_episodes = 400
  # 40 runs × 50 problems of KV cache at once (about 3.5 GB for the shipped model).
  c.eval_chunk = 50
  # One evaluation during training, for the learning curves (sampled accuracy and critical-token
  # probability): each costs about 40 minutes here.
  c.eval_every = 25
  c.critical_eval_problems = 64
  c.checkpoint_every = 2
  return c
