"""Selectivity of KL token weights (SPEC §6): does the penalty spare the critical tokens only?

The paper's premise is that the prioritized weights w = Ĵ^β are ≈ 0 on critical tokens and ≈ 1
everywhere else. `selectivity` measures it on any weights: the mean weight on critical and on other
tokens, and the share of the total reduction Σ_t (1 − w_t) that falls on critical tokens. A share
near 1 means the prioritized penalty is the paper's intervention (no KL on critical tokens); a
small one means it mostly lowers the KL a little everywhere.

`selectivity` is a pure jnp function, used inside the jitted RL iteration on sampled episodes;
`teacher_forced_grid` evaluates it for a reference model on correct completions over a grid of
(certainty method, τ_c, β); `deviation_analysis` asks whether the tokens the weights spare decide
the episode; `reduction_by_place` says where along the completion the reduction falls.
"""
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from critical_kl import arithmetic
from critical_kl import critical_tokens as critical_tokens_lib
from critical_kl import token_weights
from critical_kl import tokenizer

# Σ(1 − w) below this counts as no reduction at all (e.g. standard KL): the share is then 0.
_NO_REDUCTION = 1e-12


def selectivity(weights, critical, mask) -> dict[str, jnp.ndarray]:
  """Where the weights lower the KL penalty.

  Args:
    weights: float [...], the KL token weights w (1 = full penalty).
    critical: bool [...], critical tokens (counted only where `mask` is set).
    mask: float or bool [...], the tokens that count (e.g. generated ones).

  Returns:
    weight_critical: mean w over critical tokens (1 if there are none);
    weight_other: mean w over the other tokens (1 if there are none);
    reduction_share: Σ_critical (1 − w) / Σ (1 − w), 0 when the weights lower nothing;
    critical_fraction: the share of counted tokens that are critical.
    All scalars.
  """
  mask = jnp.asarray(mask, jnp.float32)
  on_critical = jnp.asarray(critical, jnp.float32) * mask
  on_other = mask - on_critical
  reduction = (1.0 - jnp.asarray(weights, jnp.float32)) * mask
  mean = lambda w_sum, n: jnp.where(n > 0, w_sum / jnp.maximum(n, 1.0), 1.0)
  total = jnp.sum(reduction)
  return dict(
      weight_critical=mean(jnp.sum(weights * on_critical), jnp.sum(on_critical)),
      weight_other=mean(jnp.sum(weights * on_other), jnp.sum(on_other)),
      reduction_share=jnp.where(total > _NO_REDUCTION,
                                jnp.sum(reduction * on_critical) / jnp.maximum(total, 1e-30), 0.0),
      critical_fraction=jnp.sum(on_critical) / jnp.maximum(jnp.sum(mask), 1.0))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
  """Area under the ROC curve of `scores` ranking `positive` items first (ties count half).

  Args:
    scores: float [n]; higher means "more likely positive".
    positive: bool [n].

  Returns:
    The AUROC, or None without positives or without negatives.
  """
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if not n_pos or not n_neg:
    return None
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  # Average ranks over ties (1-based), so that equal scores count half.
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def teacher_forced_grid(params, gpt, operands: np.ndarray, n_max: int, *,
                        methods: Sequence[str] = ("negentropy_max_prob",),
                        certainty_temperatures: Sequence[float] = (1.0,),
                        betas: Sequence[float] = (150.0,),
                        vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT,
                        ensemble: bool = False, epistemic: bool = False) -> list[dict]:
  """Selectivity of Ĵ^β for a reference model, teacher-forced on correct completions.

  One teacher-forced pass per (method, τ_c); β is applied on the host.

  Args:
    params, gpt: the reference model.
    operands: int [n, 2], problems with an operand longer than `n_max` (so with critical tokens).
    n_max: N of the model's pre-training.
    methods: certainty methods (`certainty.CERTAINTY_METHODS`).
    certainty_temperatures: τ_c values.
    betas: β values.
    vocabulary: the model's.
    ensemble, epistemic: `params` are a reference ensemble's stacked members, Ĵ their mixture's
      (`critical_tokens.teacher_forced`).

  Returns:
    One dict per (method, τ_c, β): those three, the fields of `selectivity`, `mean_weight` (over
    all completion tokens: the factor of the `matched` control), the numbers of critical and other
    tokens, and `auroc` of 1 − Ĵ ranking critical tokens first.
  """
  rows = []
  for method in methods:
    for tau_c in certainty_temperatures:
      forced = critical_tokens_lib.teacher_forced(params, gpt, operands, n_max,
                                                  certainty_method=method,
                                                  certainty_temperature=tau_c,
                                                  vocabulary=vocabulary, ensemble=ensemble,
                                                  epistemic=epistemic)
      certainty = np.concatenate(forced.certainty).astype(np.float64)
      critical = np.concatenate(forced.critical)
      area = auroc(1.0 - certainty, critical)
      for beta in betas:
        weights = np.asarray(token_weights.prioritized_weights(certainty, beta), np.float64)
        figures = {k: float(v) for k, v in
                   selectivity(weights, critical, np.ones_like(weights)).items()}
        rows.append(dict(method=method, certainty_temperature=float(tau_c), beta=float(beta),
                         **figures, mean_weight=float(weights.mean()),
                         critical_tokens=int(critical.sum()),
                         other_tokens=int((~critical).sum()), auroc=area))
  return rows


# Where a non-critical token sits (`reduction_by_place`): the scratchpad lines that hold critical
# tokens, the later step lines, and the rest (the closing line, `</scratch>`, the result).
OTHER_PLACES = ("other, lines 1-3", "other, later lines", "other, closing and result")


def _places(a: int, b: int, n_max: int) -> list[str]:
  """str [len(scratchpad(a, b))]: each token's place (critical tokens by line and name)."""
  text = arithmetic.scratchpad(a, b)
  newline = np.array([ch == "\n" for ch in text])
  line = np.cumsum(newline) - newline - 1  # a line owns its "\n"; step lines from 1
  steps = text.count("\n") - 5  # less the leading "\n", `<scratch>`, closing, `</scratch>`, result
  places = [OTHER_PLACES[0] if 1 <= k <= arithmetic.CRITICAL_LINES else
            OTHER_PLACES[1] if 1 <= k <= steps else OTHER_PLACES[2] for k in line]
  for token in arithmetic.critical_tokens(a, b, n_max):
    places[token["offset"]] = f"critical, line {token['line']} {token['name']}"
  return places


def reduction_by_place(operands: np.ndarray, n_max: int, weights: Sequence[np.ndarray],
                       low: float = 0.3) -> list[dict]:
  """Where along the correct completions the reduction Σ(1 − w) falls.

  Args:
    operands: int [n, 2], the problems.
    n_max: N of the reference's pre-training (places the critical tokens).
    weights: one array [C_i] per problem, the weights along its correct completion (e.g. the
      teacher-forced Ĵ^β).
    low: the weight below which a token counts as spared.

  Returns:
    One dict per place (critical tokens by line and name, sorted, then `OTHER_PLACES`):
    place, tokens, mean_weight, spared (share of its tokens with w < low) and share (its part of
    the total reduction).
  """
  by_place: dict[str, list[float]] = {}
  for (a, b), w in zip(np.asarray(operands).reshape(-1, 2), weights, strict=True):
    for place, wi in zip(_places(int(a), int(b), n_max), np.asarray(w, np.float64), strict=True):
      by_place.setdefault(place, []).append(wi)
  total = sum(np.sum(1.0 - np.array(v)) for v in by_place.values())
  order = sorted(p for p in by_place if p.startswith("critical")) + [
      p for p in OTHER_PLACES if p in by_place]
  return [dict(place=p, tokens=len(by_place[p]), mean_weight=float(np.mean(by_place[p])),
               spared=float(np.mean(np.array(by_place[p]) < low)),
               share=float(np.sum(1.0 - np.array(by_place[p])) / total) if total > 0 else 0.0)
          for p in order]


def deviation_analysis(completions: Sequence[str], operands: np.ndarray, n_max: int,
                       weights: Sequence[np.ndarray], low: float = 0.5) -> dict:
  """Are the tokens the weights spare decisive? Where sampled episodes first leave the correct
  completion, and how often an episode still succeeds after leaving it there.

  The prefix before an episode's first deviation is the correct one, so the reference's weight at
  that position is the teacher-forced one (`teacher_forced_grid`'s inputs).

  Args:
    completions: n generated completions (e.g. sampled at τ).
    operands: int [n, 2], their problems.
    n_max: N of the reference's pre-training (places the critical tokens).
    weights: one array [C_i] per problem, the teacher-forced KL weights along its correct
      completion (e.g. Ĵ^β).
    low: a non-critical deviation counts as "spared" where the weight is below this.

  Returns:
    num_episodes, on_path (episodes that never deviate), and for each kind of first deviation,
    "critical", "spared" (non-critical, weight < low), "other" (non-critical, weight ≥ low):
    dict(count, solved): how many episodes first deviate there and how many of those still end
    with the right result.
  """
  operands = np.asarray(operands).reshape(-1, 2)
  kinds = {k: dict(count=0, solved=0) for k in ("critical", "spared", "other")}
  on_path = 0
  for text, (a, b), w in zip(completions, operands, weights, strict=True):
    a, b = int(a), int(b)
    expected = arithmetic.scratchpad(a, b)
    i = critical_tokens_lib.first_error(text, expected)
    if i is None or i >= len(expected):
      on_path += 1
      continue
    kind = ("critical" if arithmetic.critical_mask(a, b, n_max)[i] else
            "spared" if w[i] < low else "other")
    kinds[kind]["count"] += 1
    kinds[kind]["solved"] += int(arithmetic.is_correct(text, a, b))
  return dict(num_episodes=len(completions), on_path=on_path, **kinds)
