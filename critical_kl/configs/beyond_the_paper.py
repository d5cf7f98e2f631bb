"""Beyond the paper, at CPU scale: prioritized KL against an ensemble reference's and against
token weights on both terms, beside standard KL, in the main job's program (same seeds, problems
and keys).

  standard                w = 1
  prioritized             w = Ĵ^β of the shipped model (the paper)
  ensemble                w = Ĵ^β of the mixture of a reference ensemble, which is also the KL's
                          π_ref (the paper's footnote 2)
  prioritized+rho=0.2     the paper's KL weights, and the policy-gradient term on the 20% of tokens
                          where the policy's entropy is highest (the "minority tokens" rule)

The ensemble is `critical_kl/configs/ensemble_n5.py` (four short fine-tunes of the shipped model);
make it first:

  python -m experiments.pretrain --config=critical_kl/configs/ensemble_n5.py \\
      --workdir=runs/ensemble_n5 --export=runs/ensemble_n5_model
  python -m experiments.prioritized_kl --config=critical_kl/configs/beyond_the_paper.py \\
      --workdir=runs/beyond_the_paper
"""
from critical_kl.configs import prioritized_kl


def get_config():
  c = prioritized_kl.get_config()
  c.arms = "standard,prioritized,ensemble,prioritized+rho=0.2"
  c.reference_ensemble = "runs/ensemble_n5_model"
  return c
