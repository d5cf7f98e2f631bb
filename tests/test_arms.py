"""Arm lists: parsing, overrides, the matched arm's α factor, per-run fields."""
import numpy as np
import pytest

from critical_kl import arms


def test_the_five_arms():
  parsed = arms.parse("standard,prioritized,matched,oracle,no_kl", beta=150.0)
  assert [a.name for a in parsed] == ["standard", "prioritized", "matched", "oracle", "no_kl"]
  assert [a.rule for a in parsed] == ["certainty", "certainty", "certainty", "oracle", "certainty"]
  assert [a.beta for a in parsed] == [0.0, 150.0, 0.0, 0.0, 0.0]
  assert [a.kl_scale for a in parsed] == [1.0, 1.0, None, 1.0, 0.0]
  assert arms.needs_matched_scale(parsed)
  resolved = arms.resolve_matched(parsed, 0.9)
  assert [a.kl_scale for a in resolved] == [1.0, 1.0, 0.9, 1.0, 0.0]
  run = arms.run_arms([resolved[i] for i in (0, 0, 1, 2, 3, 4)])
  np.testing.assert_array_equal(run.beta, [0, 0, 150, 0, 0, 0])
  np.testing.assert_allclose(run.kl_scale, [1, 1, 1, 0.9, 1, 0])
  np.testing.assert_array_equal(run.rule, [0, 0, 0, 0, 1, 0])
  np.testing.assert_array_equal(run.pg_top_share, np.ones(6))


def test_overrides():
  a, b, c, d = arms.parse("prioritized+beta=500, standard+lr=1e-4 ,standard+kl=0.5+lr=3e-5,"
                          "entropy+c=4+rho=0.2", 150.0)
  assert (a.kind, a.beta, a.learning_rate) == ("prioritized", 500.0, None)
  assert (b.name, b.learning_rate, b.kl_scale) == ("standard+lr=1e-4", 1e-4, 1.0)
  assert (c.kl_scale, c.learning_rate) == (0.5, 3e-5)
  assert (d.rule, d.entropy_exponent, d.pg_top_share) == ("entropy", 4.0, 0.2)
  run = arms.run_arms([a, d])
  np.testing.assert_array_equal(run.rule, [0, 2])
  np.testing.assert_allclose(run.pg_top_share, [1.0, 0.2])


@pytest.mark.parametrize("spec,message", [
    ("", "empty"), ("standard,standard", "repeat"), ("greedy", "unknown arm"),
    ("prioritized+gamma=1", "cannot read"), ("prioritized+beta=x", "must be a number"),
    ("prioritized+beta=-1", ">= 0"), ("standard+lr=0", "> 0"), ("standard+rho=1.5", "in")])
def test_bad_lists_raise(spec, message):
  with pytest.raises(ValueError, match=message):
    arms.parse(spec, 150.0)


def test_unresolved_matched_arm_cannot_run():
  with pytest.raises(ValueError, match="not set"):
    arms.run_arms(list(arms.parse("matched", 150.0)))


def test_ensemble_arm_takes_the_prioritized_beta_and_flags_its_runs():
  parsed = arms.parse("prioritized,ensemble,ensemble+beta=10", beta=150.0)
  assert [a.rule for a in parsed] == ["certainty"] * 3
  assert [a.beta for a in parsed] == [150.0, 150.0, 10.0]
  assert arms.needs_ensemble(parsed) and not arms.needs_ensemble(parsed[:1])
  run = arms.run_arms(list(parsed))
  np.testing.assert_array_equal(run.ensemble, [False, True, True])
  np.testing.assert_array_equal(run.beta, [150, 150, 10])
