"""Selectivity of KL token weights: hand-computed values, AUROC, the teacher-forced grid."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critical_kl import arithmetic
from critical_kl import checkpoints
from critical_kl import selectivity


def test_selectivity_by_hand():
  weights = jnp.array([[0.0, 0.5, 1.0, 0.9, 0.2]])
  critical = jnp.array([[True, False, False, False, True]])
  mask = jnp.array([[1, 1, 1, 1, 0]], jnp.float32)  # the last token does not count
  s = selectivity.selectivity(weights, critical, mask)
  assert float(s["weight_critical"]) == pytest.approx(0.0)
  assert float(s["weight_other"]) == pytest.approx(0.8)
  # Reductions: 1.0 on the critical token, 0.5 + 0 + 0.1 elsewhere.
  assert float(s["reduction_share"]) == pytest.approx(1.0 / 1.6)
  assert float(s["critical_fraction"]) == pytest.approx(0.25)


def test_selectivity_without_reduction_or_critical_tokens():
  ones = jnp.ones((2, 3))
  s = selectivity.selectivity(ones, jnp.zeros((2, 3), bool), ones)
  assert float(s["reduction_share"]) == 0.0
  assert float(s["weight_critical"]) == 1.0 and float(s["weight_other"]) == 1.0
  jitted = jax.jit(selectivity.selectivity)(ones * 0.5, jnp.zeros((2, 3), bool), ones)
  assert float(jitted["reduction_share"]) == 0.0


def test_auroc():
  assert selectivity.auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
  assert selectivity.auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
  assert selectivity.auroc([0.5, 0.5, 0.5], [True, False, False]) == 0.5
  assert selectivity.auroc([0.3, 0.7, 0.5], [True, False, True]) == 0.0
  assert selectivity.auroc([1.0, 2.0], [False, False]) is None


def test_teacher_forced_grid(tiny_model):
  params, gpt, saved = checkpoints.load_model(tiny_model)
  operands = arithmetic.sample_rl(np.random.default_rng(0), 6, 1, 1)
  rows = selectivity.teacher_forced_grid(params, gpt, operands, saved["pretrain_max_digits"],
                                         methods=("negentropy", "max_prob"),
                                         certainty_temperatures=(1.0, 4.0), betas=(0.0, 150.0))
  assert len(rows) == 8
  for row in rows:
    assert row["critical_tokens"] > 0 and row["other_tokens"] > row["critical_tokens"]
    assert 0.0 <= row["reduction_share"] <= 1.0 and 0.0 <= row["auroc"] <= 1.0
    if row["beta"] == 0.0:  # Ĵ^0 = 1: no reduction anywhere
      assert row["mean_weight"] == 1.0 and row["reduction_share"] == 0.0
    else:
      assert row["mean_weight"] < 1.0


def test_reduction_by_place_by_hand():
  a, b = 123456, 78
  text = arithmetic.scratchpad(a, b)
  weights = np.ones(len(text))
  weights[arithmetic.critical_mask(a, b, 5)] = 0.0  # six critical tokens, reduction 1 each
  later = text.index("[1,2,3] +")  # the fourth step line
  weights[later] = 0.5
  weights[text.index("END")] = 0.8
  rows = {r["place"]: r for r in selectivity.reduction_by_place(np.array([[a, b]]), 5, [weights])}
  assert [p for p in rows if p.startswith("critical")] == [
      f"critical, line {k} n+1_{name}" for k in (1, 2, 3) for name in ("comma", "digit")]
  total = 6 + 0.5 + 0.2
  assert rows["critical, line 2 n+1_digit"]["share"] == pytest.approx(1 / total)
  assert rows["critical, line 2 n+1_digit"]["spared"] == 1.0
  assert rows["other, later lines"]["share"] == pytest.approx(0.5 / total)
  assert rows["other, closing and result"]["share"] == pytest.approx(0.2 / total)
  assert rows["other, lines 1-3"]["share"] == 0.0 and rows["other, lines 1-3"]["mean_weight"] == 1
  assert sum(r["tokens"] for r in rows.values()) == len(text)
  assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
