"""A selective reference: the shipped model trained on, with N+1 problems whose critical decisions
are held out of the loss [ours] (see critical_kl/pretrain.py).

The shipped model is uncertain on many non-critical tokens of N+1 problems (the longer `A=[...]`
lists, the result line, the copies of later lines), so Ĵ^β lowers the KL a little everywhere
instead of on the critical tokens (docs/results.md, selectivity). Here a quarter of each batch is
"RL on N+1" problems in which the loss skips only the critical tokens and the `]` closing each
critical run: the model learns everything about six-digit numbers but when to stop copying an
operand in the first three lines, the paper's critical decision.

  python -m experiments.pretrain --config=critical_kl/configs/held_out_decisions.py \
      --workdir=runs/held_out_decisions --export=runs/addition_n5_held_out
"""
from critical_kl import checkpoints
from critical_kl.configs import phenomenon


def get_config():
  c = phenomenon.get_config()
  c.init_checkpoint = checkpoints.DEFAULT_MODEL
  c.held_out_digits = 1
  c.held_out_fraction = 0.25
  c.num_steps = 1500
  c.warmup_steps = 50
  c.learning_rate = 1e-4
  c.min_learning_rate_ratio = 0.1
  c.checkpoint_every = 250
  c.eval_every = 250
  c.eval_num_examples = 128
  return c
