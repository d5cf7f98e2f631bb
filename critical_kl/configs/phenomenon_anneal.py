"""Second and third phases of the shipped model: the phenomenon run resumed at a lower peak rate.

Resumes the workdir of `phenomenon.py` at its last step (2,900) with a schedule whose rate at that
step (1.3e-4) is close to where the first phase ended (1e-4), then decays to 3e-5 at step 4,900.
The shipped model had a third phase: the same config resumed at step 4,900 with
`--config.num_steps=6900` (the rate climbs back to 8e-5, then decays to 3e-5). Measured
(docs/results.md, section 1): after phase 1, 95-97% at N digits and 16.5% at N+1 (varying); after
phase 2, 99.6-100% and 48.1%; after phase 3, 100% and 27.8%, with 64% of the N+1 failures now
starting at a critical token (21% and 48% before).

  python -m experiments.pretrain --config=critical_kl/configs/phenomenon.py --workdir=runs/phenomenon
  python -m experiments.pretrain --config=critical_kl/configs/phenomenon_anneal.py \
      --workdir=runs/phenomenon
  python -m experiments.pretrain --config=critical_kl/configs/phenomenon_anneal.py \
      --config.num_steps=6900 --workdir=runs/phenomenon --export=runs/addition_n5
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
