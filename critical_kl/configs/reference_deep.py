"""A deeper reference: 6 layers instead of 3, pre-trained from scratch on 1..5 digits [ours]: a try
at a selective reference (docs/results.md, section 2).

What keeps the shipped model from being selective is that, at N+1, it is unsure on many tokens
besides the critical ones (the longer `A=[...]` lists, the result line): a model that generalizes
better in length would be certain there and still unsure where it must decide when to stop copying
an operand. Depth is the cheaper of the two levers on a CPU (twice the shipped model's cost per
step; twice the width would be about four times). The schedule is the shipped model's first phase
(2,900 steps, cosine 1e-3 -> 1e-4, warm-up 200), checkpointed every 250 steps so that the
selectivity can be read from every checkpoint while it trains; the run resumes when restarted.
Measured so far (docs/results.md, section 2): at step 2,000, 85.9% greedy at N and 14.1% at N+1,
and 12% of the weight reduction on critical tokens at τ_c = 1, β = 150 (the shipped model: 24%).

  python -m experiments.pretrain --config=critical_kl/configs/reference_deep.py \
      --workdir=runs/reference_deep --export=runs/addition_n5_deep
  python -m experiments.critical_tokens --checkpoint=runs/reference_deep/checkpoints/STEP \
      --num_problems=64 --failures=0 --sampled=0 --grid_certainty_temperatures=0.25,0.5,1 \
      --grid_betas=10,150,2000
"""
from critical_kl.configs import phenomenon


def get_config():
  c = phenomenon.get_config()
  c.model.n_layer = 6
  return c
