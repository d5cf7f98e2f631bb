"""The shipped model, first phase: pre-trained on 1..5 digits on a 2-core CPU (paper's phenomenon).

Same architecture family as the default (nanoGPT, 3 layers, 128 wide) with N = 5 and longer
training, so that non-critical tokens become near-certain while the (N+1)-th digit stays uncertain.
Random start positions [ours, SPEC §3] make copying relative, which turns "cannot read a longer
prompt" into the paper's critical-token failure.

  python -m experiments.pretrain --config=critical_kl/configs/phenomenon.py --workdir=runs/phenomenon

The later phases, `phenomenon_anneal.py`, resume this workdir and export the shipped model.
"""
from critical_kl.configs import pretrain_default


def get_config():
  c = pretrain_default.get_config()
  c.pretrain_max_digits = 5
  c.num_steps = 2900
  c.warmup_steps = 200
  c.checkpoint_every = 250
  c.eval_every = 500
  c.eval_num_examples = 128
  return c
