"""A longer low-rate anneal of the shipped model: a try at a more selective reference [ours].

The shipped model's last phase ended at a learning rate of 3e-5. Continuing at a constant 1e-4
made it more certain on critical tokens and less on the other out-of-distribution ones (the share
of the weight reduction on critical tokens fell from 0.23 to 0.12, docs/results.md, section 2).
This continues instead at the rate where the shipped run stopped, decaying tenfold over 1,000 more
steps (warm-up 50: Adam's moments start afresh), on the shipped run's data (1..5 digits, random
start positions), so that the model settles rather than moves.

  python -m experiments.pretrain --config=critical_kl/configs/long_anneal.py \
      --workdir=runs/long_anneal --export=runs/addition_n5_long_anneal
  python -m experiments.critical_tokens --checkpoint=runs/addition_n5_long_anneal \
      --num_problems=64 --failures=0 --sampled=0 --grid_certainty_temperatures=0.25,0.5,1 \
      --grid_betas=10,150,2000
"""
from critical_kl import checkpoints
from critical_kl.configs import phenomenon


def get_config():
  c = phenomenon.get_config()
  c.init_checkpoint = checkpoints.DEFAULT_MODEL
  c.num_steps = 1000
  c.warmup_steps = 50
  c.learning_rate = 3e-5
  c.min_learning_rate_ratio = 0.1
  c.checkpoint_every = 250
  c.eval_every = 250
  c.eval_num_examples = 128
  return c
