"""A reference pre-trained on 1..3 digits (N = 3), for RL on 4 digits [ours]: a try at a selective
reference.

The paper's certainty gap on critical tokens is largest at N = 3 (ΔĴ −0.33 against −0.21 at N = 5,
SPEC §6), and its sequences are shorter, so the RL on N + 1 digits costs less per episode. Same
architecture as the shipped model (3 layers, 128 wide), random start positions, one cosine
schedule from 1e-3 to 1e-4 over 3,000 steps (about 45 minutes on a 2-core CPU).

  python -m experiments.pretrain --config=critical_kl/configs/reference_n3.py \
      --workdir=runs/n3 --export=runs/addition_n3

Measured (docs/results.md, section 2, "A reference at N = 3"): 100% greedy at 3 digits but 0% at
4, and at τ_c = 1, β = 150 only 20% of the weight reduction on critical tokens (the shipped model:
24%), so it is not shipped. Its selectivity, read from the training checkpoints:

  python -m experiments.critical_tokens --checkpoint=runs/n3/checkpoints/3000 --num_problems=64 \
      --failures=0 --sampled=0 --grid_certainty_temperatures=0.25,0.5,1 --grid_betas=10,150,2000
"""
from critical_kl.configs import pretrain_default


def get_config():
  c = pretrain_default.get_config()
  c.pretrain_max_digits = 3
  c.num_steps = 3000
  c.warmup_steps = 200
  c.eval_every = 500
  c.eval_num_examples = 128
  return c
