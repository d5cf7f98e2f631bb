"""Second phase of the shipped model: 2,000 more steps of the phenomenon run at a lower peak rate.

Resumes the workdir of `phenomenon.py` at its last step (2,900) with a schedule whose rate at that
step (1.3e-4) is close to where the first phase ended (1e-4), then decays to 3e-5 at step 4,900.
Measured (docs/results.md, section 1): N-digit accuracy 95-97% → 99.6-100%, N+1 (varying)
16.5% → 48.1%.

  python -m experiments.pretrain --config=critical_kl/configs/phenomenon.py --workdir=runs/phenomenon
  python -m experiments.pretrain --config=critical_kl/configs/phenomenon_anneal.py \
      --workdir=runs/phenomenon --export=runs/addition_n5
  rm -rf critical_kl/pretrained/addition_n5
  cp -r runs/addition_n5 critical_kl/pretrained/addition_n5
"""
from critical_kl.configs import phenomenon


def get_config():
  c = phenomenon.get_config()
  c.num_steps = 4900
  c.learning_rate = 3e-4
  c.eval_every = 500
  return c
