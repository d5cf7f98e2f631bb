"""Paper scale: the 85M GPT-2 pre-trained on 1..N-digit addition, N = 7, 9, 11 or 13 (SPEC §3).

N is the config string (ml_collections' `get_config(arg)` convention):

  python -m experiments.pretrain --config=critical_kl/configs/paper_pretrain.py:7 \
      --workdir=runs/paper_pretrain_7 --export=runs/paper_pretrain_7/model

The RL configs `paper_*.py` load the exported model from `runs/paper_pretrain_{N}/model`.
Architecture [paper]: 12 layers, 12 heads, width 768 (85M parameters), nanoGPT layout; the context
holds an N + 3-digit rollout (block_size computed from the format). The optimiser, batch and length
of training are [ours]: SPEC §3 fixes none of them. They follow nanoGPT's recipe for a model of this
size (AdamW, peak learning rate 3e-4 with warm-up and cosine decay, weight decay 0.1, clipping 1.0);
fresh problems every step, so the run never repeats a problem set.
"""
import ml_collections

from critical_kl import model as model_lib
from critical_kl.configs import pretrain_default

# The pre-training levels of the paper's Tables 4–5 (SPEC §3).
PAPER_DIGITS = (7, 9, 11, 13)


def parse_digits(arg: str | None, default: int = 7) -> int:
  """N from a config string ("7"); None or "" gives `default`."""
  if arg is None or arg == "":
    return default
  try:
    n = int(arg)
  except ValueError:
    raise ValueError(f"the config argument must be a number of digits N, got {arg!r}") from None
  if n < 1:
    raise ValueError(f"N must be >= 1, got {n}")
  return n


def model_dir(n: int) -> str:
  """Where the pre-training command above exports the model of level N."""
  return f"runs/paper_pretrain_{n}/model"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = pretrain_default.get_config()
  c.pretrain_max_digits = parse_digits(arg)
  c.model.update(model_lib.PAPER_85M)
  c.model.value_hidden = 128  # [paper] value head d → 128 → 128 → 1
  c.model.block_size = 0  # fit an N + 3-digit rollout
  c.batch_size = 64
  c.num_steps = 20_000
  c.learning_rate = 3e-4
  c.warmup_steps = 1_000
  c.min_learning_rate_ratio = 0.1
  c.weight_decay = 0.1
  c.grad_clip = 1.0
  c.log_every = 100
  c.checkpoint_every = 1_000
  c.eval_every = 2_000
  c.eval_num_examples = 200
  return c
