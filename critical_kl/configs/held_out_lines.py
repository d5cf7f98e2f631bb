"""A selective reference, second try: the held-out rows of `held_out_decisions.py` skip whole lines
[ours] (see critical_kl/pretrain.py).

Holding out only the critical tokens and their `]` was not enough: the model learnt when to stop
copying a six-digit operand from the rest of the first lines (whose arithmetic needs the operand's
last digits read from the prompt), and its weight on critical tokens rose with its accuracy at N+1
(docs/results.md, section 2). Here the loss of those rows skips every token of the first three
scratchpad lines, the ones holding critical tokens; the later lines copy their lists from the line
above, so the model learns the longer `A=[...]` lists and result lines of N+1 problems without
ever having to read a six-digit operand from the prompt. Everything else is as in
`held_out_decisions.py`, checkpointed every 125 steps so that the selectivity can be read early.

Measured (docs/results.md, section 2): not selective either. Within 125 steps the correct critical
token's probability rises from 0.80 to 0.94, and at the RL default (τ_c = 1, β = 150) the share of
the weight reduction on critical tokens peaks at 0.37 (step 250) and is 0.29 at step 500, where
the run was stopped; the first three lines' other tokens, never trained on here, stay uncertain.

  python -m experiments.pretrain --config=critical_kl/configs/held_out_lines.py \
      --workdir=runs/held_out_lines --export=runs/addition_n5_held_out_lines
  python -m experiments.critical_tokens --checkpoint=runs/held_out_lines/checkpoints/STEP \
      --num_problems=64 --failures=0 --sampled=0 --grid_certainty_temperatures=0.25,0.5,1 \
      --grid_betas=10,150,2000
"""
from critical_kl.configs import held_out_decisions


def get_config():
  c = held_out_decisions.get_config()
  c.held_out_scope = "lines"
  c.checkpoint_every = 125
  return c
