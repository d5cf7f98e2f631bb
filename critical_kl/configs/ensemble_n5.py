"""A reference ensemble for the shipped model: K = 4 short fine-tunes of it, each on its own data.

Full pre-training of one model of the shipped size takes about 2.5 hours on a 2-core CPU (docs/
results.md, section 1), so the members are not independent pre-trainings: each starts from the
shipped model and continues its last phase for 100 steps (peak rate 3e-4, warm-up 20, cosine decay
to 3e-5, the anneal's settings) on its own problems and start positions (seed 1 + k), all four in
one vmapped program. Their disagreement is what the data order leaves; the results say how much
that changes the certainty (docs/results.md, "Beyond the paper").

  python -m experiments.pretrain --config=critical_kl/configs/ensemble_n5.py \
      --workdir=runs/ensemble_n5 --export=runs/ensemble_n5_model
"""
import os

from critical_kl.configs import phenomenon

# critical_kl/pretrained/addition_n5, without importing the checkpoint code (and Orbax).
SHIPPED_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "pretrained", "addition_n5")


def get_config():
  c = phenomenon.get_config()
  c.init_checkpoint = SHIPPED_MODEL
  c.ensemble_members = 4
  c.seed = 1
  c.num_steps = 100
  c.warmup_steps = 20
  c.learning_rate = 3e-4
  c.eval_every = 0
  c.log_every = 25
  c.checkpoint_every = 25
  return c
