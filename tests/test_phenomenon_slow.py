"""The phenomenon recipe, re-trained small (slow: about 17 minutes on 2 CPU cores).

Pre-trains the default architecture on 1..3 digits with random start positions in the shipped
model's first two phases (`phenomenon.py`, then `phenomenon_anneal.py` resuming the same workdir at
a lower rate; the third phase only resumes that config for longer) and checks the direction of the shipped model's targets: near-perfect at N, worse at
N+1, and a negative certainty gap ΔĴ on critical tokens as in the paper's Table 1.
Run with `python -m pytest -m slow tests/test_phenomenon_slow.py`.
"""
import numpy as np
import pytest

from critical_kl import arithmetic
from critical_kl import critical_tokens
from critical_kl import evaluation
from critical_kl import pretrain
from critical_kl.configs import phenomenon
from critical_kl.configs import phenomenon_anneal


@pytest.mark.slow
def test_recipe_shows_the_phenomenon_at_small_scale(tmp_path):
  c = phenomenon.get_config()
  c.pretrain_max_digits = 3
  c.num_steps = 1500
  c.eval_every = 0
  pretrain.train(c, str(tmp_path), log=lambda _: None)
  # Second phase: the same workdir resumed at the anneal config's lower peak rate.
  c = phenomenon_anneal.get_config()
  c.pretrain_max_digits = 3
  c.num_steps = 2000
  c.eval_every = 0
  state = pretrain.train(c, str(tmp_path), log=lambda _: None)
  assert int(state["step"]) == 2000
  gpt = pretrain.model_config(c)
  at_n = evaluation.evaluate_suite(state["params"], gpt, 3, "varying", 200)
  at_n1 = evaluation.evaluate_suite(state["params"], gpt, 4, "varying", 200)
  assert at_n["accuracy"] >= 0.9
  assert at_n1["accuracy"] < at_n["accuracy"]
  operands = arithmetic.sample_varying(np.random.default_rng(0), 50, 4)
  forced = critical_tokens.teacher_forced(state["params"], gpt, operands, 3)
  gap = critical_tokens.certainty_gap(forced.certainty, forced.critical_names)
  assert gap["critical"]["mean"] < -0.01
