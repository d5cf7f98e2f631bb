"""The arms of an RL comparison: what differs between them is the token weights, α or the rate.

Every arm runs the same seeds, problems and keys (SPEC §7.6); an arm is a rule for the KL token
weights w_t, a factor on α, optionally a mask of the policy-gradient term and its own learning
rate:

  standard       w = 1
  prioritized    w = Ĵ^β, the paper's penalty (β from the config, or `prioritized+beta=500`)
  matched        w = 1 with α scaled by the prioritized weights' mean, measured teacher-forced on
                 correct completions before RL and then fixed: the same KL pressure without the
                 selectivity
  oracle         w = 0 on the critical positions while the episode's prefix is still correct,
                 1 elsewhere: what the prioritized weights approximate
  no_kl          α = 0: "ignore the KL penalty" taken literally
  entropy        w = (1 + H(π_ref))^−c, the reference's Shannon entropy at τ_c (c = 1 unless set)
  ensemble       w = Ĵ^β of a reference ensemble's mixture (`certainty.ensemble_certainty`, the
                 paper's footnote 2), whose mixture is also the KL's π_ref (β as prioritized;
                 needs the config's `reference_ensemble`)

An arm list is a comma-separated string (the config field `arms`), e.g.
"standard,prioritized,matched,oracle,no_kl"; `+key=value` suffixes override one arm's `beta`,
`lr` (learning rate), `kl` (factor on α), `c` (the entropy rule's exponent) or `rho`: the
policy-gradient term then counts only the top-ρ share of tokens by policy entropy
(`token_weights.top_entropy_mask`; ρ = 1, the default, counts every token). Examples:
"standard+lr=1e-4", "prioritized+beta=500", "prioritized+rho=0.2", "entropy+c=4".
"""
import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

KINDS = ("standard", "prioritized", "matched", "oracle", "no_kl", "entropy", "ensemble")
# The kinds whose β is the config's (or their `+beta=` override).
_WITH_BETA = ("prioritized", "ensemble")
# The KL weights rule of each kind: "certainty" is Ĵ^β (ones at β = 0), "oracle" the critical
# mask, "entropy" (1 + H)^−c. Codes of `RunArms.rule`, in this order.
RULES = ("certainty", "oracle", "entropy")
_RULES = {"standard": "certainty", "prioritized": "certainty", "matched": "certainty",
          "oracle": "oracle", "no_kl": "certainty", "entropy": "entropy",
          "ensemble": "certainty"}


@dataclasses.dataclass(frozen=True)
class Arm:
  """One arm.

  Attributes:
    name: as written in the arm list, e.g. "prioritized+beta=500".
    kind: one of KINDS.
    beta: β of the certainty weights (used by "prioritized" and "ensemble" only).
    kl_scale: factor on α; None for "matched" until `resolve_matched` sets it.
    learning_rate: the arm's own learning rate, None for the config's.
    entropy_exponent: c of the "entropy" rule.
    pg_top_share: ρ of the policy-gradient mask, 1 for none.
  """
  name: str
  kind: str
  beta: float = 0.0
  kl_scale: float | None = 1.0
  learning_rate: float | None = None
  entropy_exponent: float = 1.0
  pg_top_share: float = 1.0

  @property
  def rule(self) -> str:
    return _RULES[self.kind]


def _override(arm: Arm, item: str) -> Arm:
  key, sep, value = item.partition("=")
  fields = {"beta": "beta", "lr": "learning_rate", "kl": "kl_scale", "c": "entropy_exponent",
            "rho": "pg_top_share"}
  if not sep or key not in fields:
    raise ValueError(f"arm {arm.name!r}: cannot read {item!r}; expected one of "
                     f"{', '.join(k + '=' for k in fields)}")
  try:
    number = float(value)
  except ValueError:
    raise ValueError(f"arm {arm.name!r}: {key} must be a number, got {value!r}") from None
  if number < 0 or (key in ("lr", "rho") and number == 0) or (key == "rho" and number > 1):
    raise ValueError(f"arm {arm.name!r}: {key} must be "
                     f"{ {'lr': '> 0', 'rho': 'in (0, 1]'}.get(key, '>= 0') }, got {number}")
  return dataclasses.replace(arm, **{fields[key]: number})


def parse(spec: str, beta: float) -> tuple[Arm, ...]:
  """The arms of a comma-separated list (module docstring); `beta` is the prioritized arms' β.

  Raises:
    ValueError: on an empty list, an unknown kind, a bad override or a repeated name.
  """
  names = [s.strip() for s in spec.split(",") if s.strip()]
  if not names:
    raise ValueError("the arm list is empty")
  if len(set(names)) != len(names):
    raise ValueError(f"arm names repeat in {spec!r}")
  arms = []
  for name in names:
    kind, *overrides = name.split("+")
    if kind not in KINDS:
      raise ValueError(f"unknown arm {kind!r} in {name!r}; valid: {', '.join(KINDS)}")
    arm = Arm(name, kind, beta=float(beta) if kind in _WITH_BETA else 0.0,
              kl_scale={"no_kl": 0.0, "matched": None}.get(kind, 1.0))
    for item in overrides:
      arm = _override(arm, item)
    arms.append(arm)
  return tuple(arms)


def needs_ensemble(arms: tuple[Arm, ...]) -> bool:
  return any(arm.kind == "ensemble" for arm in arms)


def needs_matched_scale(arms: tuple[Arm, ...]) -> bool:
  return any(arm.kl_scale is None for arm in arms)


def resolve_matched(arms: tuple[Arm, ...], mean_weight: float) -> tuple[Arm, ...]:
  """The arms with every unset α factor ("matched") set to `mean_weight`."""
  return tuple(dataclasses.replace(arm, kl_scale=mean_weight) if arm.kl_scale is None else arm
               for arm in arms)


class RunArms(NamedTuple):
  """Per-run fields of the arms, for the vmapped iteration; each [R] (a scalar for one run).

  Attributes:
    rule: int32, the KL weights rule, an index into RULES.
    beta: float32, β of the certainty weights (0 gives ones).
    kl_scale: float32, factor on α.
    entropy_exponent: float32, c of the entropy rule.
    pg_top_share: float32, ρ of the policy-gradient mask (1: every token).
    ensemble: bool, the reference is the ensemble's mixture rather than the single model.
  """
  rule: jnp.ndarray
  beta: jnp.ndarray
  kl_scale: jnp.ndarray
  entropy_exponent: jnp.ndarray
  pg_top_share: jnp.ndarray
  ensemble: jnp.ndarray = np.False_


def run_arms(arms_of_runs: list[Arm]) -> RunArms:
  """The `RunArms` of a list of runs' arms (each run has one arm)."""
  for arm in arms_of_runs:
    if arm.kl_scale is None:
      raise ValueError(f"arm {arm.name!r}: its α factor is not set (see resolve_matched)")
  column = lambda field, dtype: np.array([getattr(a, field) for a in arms_of_runs], dtype)
  return RunArms(rule=np.array([RULES.index(a.rule) for a in arms_of_runs], np.int32),
                 beta=np.array([a.beta if a.kind in _WITH_BETA else 0.0 for a in arms_of_runs],
                               np.float32),
                 kl_scale=column("kl_scale", np.float32),
                 entropy_exponent=column("entropy_exponent", np.float32),
                 pg_top_share=column("pg_top_share", np.float32),
                 ensemble=np.array([a.kind == "ensemble" for a in arms_of_runs]))
