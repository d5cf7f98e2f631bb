"""Critical tokens of a pre-trained model: certainty gap ΔĴ (paper Table 1), probability, failures,
and the selectivity of the prioritized weights Ĵ^β over a grid of τ_c × β (SPEC §6).

  python -m experiments.critical_tokens
  python -m experiments.critical_tokens --checkpoint=runs/pretrain --num_problems=200
  python -m experiments.critical_tokens --grid_methods=negentropy,negentropy_max_prob,max_prob

The problems have N+1 digits by default (N: the checkpoint's pretrain_max_digits), drawn from the
"varying" suite: one operand has exactly --digits digits, the other 1..digits, so every problem has
critical tokens. ΔĴ and the critical-token probability are teacher-forced on the correct
completions [ours, SPEC §6]; the failure analysis uses greedy generations of other problems. The
example completion is coloured in the terminal and written to --html, like the paper's Figure 5.
"""
import json

from absl import flags
import jax
import numpy as np

from critical_kl import arithmetic
from critical_kl import certainty as certainty_lib
from critical_kl import checkpoints
from critical_kl import critical_tokens
from critical_kl import evaluation
from critical_kl import selectivity
from critical_kl import tokenizer
from experiments import _cli

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", checkpoints.DEFAULT_MODEL, "Exported model or training directory (default: the model shipped with the package).")
_NUM_PROBLEMS = flags.DEFINE_integer("num_problems", 100,
                                     "Problems for ΔĴ and probabilities (the paper: 50).")
_DIGITS = flags.DEFINE_integer("digits", None, "Length of the long operand (default N+1).")
_CERTAINTY_METHOD = flags.DEFINE_string(
    "certainty_method", "negentropy_max_prob",
    f"Certainty Ĵ, one of {', '.join(certainty_lib.CERTAINTY_METHODS)}.")
_CERTAINTY_TEMPERATURE = flags.DEFINE_float("certainty_temperature", 4.0, "τ_c of Ĵ.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "τ of the critical-token probabilities.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the problems.")
_HTML = flags.DEFINE_string("html", "critical_tokens.html", "Where to write the coloured example.")
_FAILURES = flags.DEFINE_integer("failures", 256,
                                 "Problems generated greedily for the failure analysis (0: skip).")
_SAMPLED = flags.DEFINE_integer(
    "sampled", 256, "Episodes sampled at --temperature for the deviation analysis (0: skip): "
    "where they first leave the correct completion and whether they still succeed.")
_WEIGHT_TEMPERATURE = flags.DEFINE_float(
    "weight_certainty_temperature", 1.0, "τ_c of the KL weights Ĵ^β in the deviation analysis "
    "(the RL default).")
_WEIGHT_BETA = flags.DEFINE_float("weight_beta", 150.0,
                                  "β of the KL weights in the deviation analysis.")
_BY_PLACE = flags.DEFINE_bool(
    "by_place", True, "Print where along the correct completions the reduction Σ(1 − w) of the "
    "weights of the deviation analysis falls: critical tokens by line, other tokens by place.")
_GRID_METHODS = flags.DEFINE_list("grid_methods", ["negentropy_max_prob"],
                                  "Certainty methods of the selectivity grid.")
_GRID_TEMPERATURES = flags.DEFINE_list("grid_certainty_temperatures", ["0.25", "0.5", "1", "2", "4"],
                                       "τ_c values of the selectivity grid.")
_EPISTEMIC = flags.DEFINE_bool(
    "epistemic", False, "For a reference ensemble: Ĵ of the members' mixture minus their "
    "disagreement (certainty.ensemble_certainty).")
_GRID_BETAS = flags.DEFINE_list("grid_betas", ["1", "10", "50", "150", "500", "2000", "10000"],
                                "β values of the selectivity grid (empty: no grid).")

# Paper, Table 1 (85M model, 50 generations): N → (critical ΔĴ mean, std, smallest non-critical ΔĴ).
PAPER_TABLE_1 = {3: (-0.33, 0.01, 0.0012), 5: (-0.21, 0.18, 0.0002), 7: (-0.13, 0.04, 0.0004)}


def _validate_flags() -> None:
  """Checks the flags that do not depend on the checkpoint, before loading it."""
  if _NUM_PROBLEMS.value < 1:
    raise ValueError(f"--num_problems must be >= 1, got {_NUM_PROBLEMS.value}")
  if _FAILURES.value < 0 or _SAMPLED.value < 0:
    raise ValueError("--failures and --sampled must be >= 0")
  if _WEIGHT_TEMPERATURE.value <= 0 or _WEIGHT_BETA.value < 0:
    raise ValueError("--weight_certainty_temperature must be > 0 and --weight_beta >= 0")
  if _CERTAINTY_METHOD.value not in certainty_lib.CERTAINTY_METHODS:
    raise ValueError(f"unknown --certainty_method {_CERTAINTY_METHOD.value!r}; valid names: "
                     f"{', '.join(certainty_lib.CERTAINTY_METHODS)}")
  if _TEMPERATURE.value <= 0 or _CERTAINTY_TEMPERATURE.value <= 0:
    raise ValueError("--temperature and --certainty_temperature must be > 0")
  for method in _GRID_METHODS.value:
    if method not in certainty_lib.CERTAINTY_METHODS:
      raise ValueError(f"unknown --grid_methods entry {method!r}; valid names: "
                       f"{', '.join(certainty_lib.CERTAINTY_METHODS)}")
  _grid_values()


def _grid_values() -> tuple[list[float], list[float]]:
  """(τ_c values, β values) of the grid flags; ValueError on a bad entry."""
  try:
    temperatures = [float(t) for t in _GRID_TEMPERATURES.value]
    betas = [float(b) for b in _GRID_BETAS.value]
  except ValueError:
    raise ValueError("--grid_certainty_temperatures and --grid_betas must be numbers") from None
  if any(t <= 0 for t in temperatures) or any(b < 0 for b in betas):
    raise ValueError("grid temperatures must be > 0 and betas >= 0")
  return temperatures, betas


def selectivity_table(rows: list[dict]) -> str:
  """One line per (method, τ_c, β) of `selectivity.teacher_forced_grid`."""
  lines = [f"{'method':22}{'τ_c':>6}{'β':>8}{'w critical':>12}{'w other':>10}{'share':>8}"
           f"{'AUROC':>8}"]
  for r in rows:
    lines.append(f"{r['method']:22}{r['certainty_temperature']:>6g}{r['beta']:>8g}"
                 f"{r['weight_critical']:>12.3f}{r['weight_other']:>10.4f}"
                 f"{r['reduction_share']:>8.3f}{r['auroc']:>8.3f}")
  return "\n".join(lines)


def _validate_digits(n_max: int, digits: int) -> None:
  if not n_max < digits <= arithmetic.MAX_DIGITS:
    raise ValueError(f"--digits must lie in {n_max + 1}..{arithmetic.MAX_DIGITS} (longer than the "
                     f"pre-training N={n_max}, or there are no critical tokens), got {digits}")


def _cell(mean, std=None) -> str:
  if mean is None:
    return "-"
  return f"{mean:+.4f}" if std is None else f"{mean:+.4f} ± {std:.4f}"


def gap_table(gap: dict, n_max: int) -> str:
  """ΔĴ per critical token name and overall, beside the paper's Table 1 for the same N."""
  paper = PAPER_TABLE_1.get(n_max)
  rows = [(f"critical ({gap['critical']['count']} tokens)",
           _cell(gap["critical"]["mean"], gap["critical"]["std"]),
           _cell(paper[0], paper[1]) if paper else "-")]
  rows += [(f"  {name} ({s['count']})", _cell(s["mean"], s["std"]), "")
           for name, s in gap["by_name"].items()]
  rows.append(("smallest non-critical", _cell(gap["min_non_critical"]),
               _cell(paper[2]) if paper else "-"))
  rows.append((f"mean non-critical ({gap['non_critical']['count']})",
               _cell(gap["non_critical"]["mean"], gap["non_critical"]["std"]), ""))
  header = ("ΔĴ", "ours", f"paper N={n_max}" if paper else "paper (no N match)")
  return "\n".join(f"{a:<28}{b:>22}  {c:>18}" for a, b, c in [header, *rows])


def failure_lines(failures: dict, top: int = 5) -> list[str]:
  """The share of first errors at critical tokens and the commonest wrong tokens of each kind."""
  share = failures["critical_share"]
  lines = [f"greedy failures: {failures['num_failures']} of {failures['num_problems']}; first "
           f"error at a critical token: {'-' if share is None else f'{100 * share:.1f}%'}"]
  for kind, counts in failures["first_errors"].items():
    common = ", ".join(f"{expected!r} → {got!r} ×{n}" for (expected, got), n in
                       counts.most_common(top))
    lines.append(f"  {kind}: {common or '-'}")
  return lines


def _failure_report(params, gpt, vocabulary: tokenizer.Vocabulary, rng: np.random.Generator,
                    digits: int, n_max: int) -> dict:
  """Generates --failures problems greedily, prints where the failures start, returns the counts."""
  operands = arithmetic.sample_varying(rng, _FAILURES.value, digits)
  _, completions = evaluation.solve(params, gpt, operands, jax.random.key(_SEED.value),
                                    batch_size=min(256, _FAILURES.value), max_digits=digits,
                                    vocabulary=vocabulary)
  failures = critical_tokens.failure_analysis(completions, operands, n_max)
  print("\n".join(failure_lines(failures)))
  return {k: failures[k] for k in ("num_problems", "num_failures", "critical_share")}


def _deviation_report(params, gpt, vocabulary, rng: np.random.Generator, digits: int,
                      n_max: int) -> dict:
  """Samples --sampled episodes, prints where they first deviate and how often they recover."""
  operands = arithmetic.sample_varying(rng, _SAMPLED.value, digits)
  _, completions = evaluation.solve(params, gpt, operands, jax.random.key(_SEED.value + 1),
                                    greedy=False, temperature=_TEMPERATURE.value,
                                    batch_size=min(256, _SAMPLED.value), max_digits=digits,
                                    vocabulary=vocabulary)
  forced = critical_tokens.teacher_forced(params, gpt, operands, n_max,
                                          certainty_method=_CERTAINTY_METHOD.value,
                                          certainty_temperature=_WEIGHT_TEMPERATURE.value,
                                          vocabulary=vocabulary)
  weights = [np.power(c.astype(np.float64), _WEIGHT_BETA.value) for c in forced.certainty]
  report = selectivity.deviation_analysis(completions, operands, n_max, weights)
  print(f"\n{report['num_episodes']} episodes sampled at τ={_TEMPERATURE.value}: "
        f"{report['on_path']} never leave the correct completion; first deviation at")
  labels = dict(critical="a critical token", spared="a non-critical token with w < 0.5",
                other="a non-critical token with w >= 0.5")
  for kind, label in labels.items():
    r = report[kind]
    print(f"  {label:38} {r['count']:5} episodes, {r['solved']:4} of them still solved "
          f"(w = Ĵ^{_WEIGHT_BETA.value:g} at τ_c={_WEIGHT_TEMPERATURE.value:g})")
  return report


def _place_report(params, gpt, vocabulary, operands: np.ndarray, n_max: int,
                  ensemble: dict) -> list[dict]:
  """Prints and returns `selectivity.reduction_by_place` of Ĵ^β on the teacher-forced problems."""
  forced = critical_tokens.teacher_forced(params, gpt, operands, n_max,
                                          certainty_method=_CERTAINTY_METHOD.value,
                                          certainty_temperature=_WEIGHT_TEMPERATURE.value,
                                          vocabulary=vocabulary, **ensemble)
  weights = [np.power(c.astype(np.float64), _WEIGHT_BETA.value) for c in forced.certainty]
  rows = selectivity.reduction_by_place(operands, n_max, weights)
  print(f"\nwhere the reduction Σ(1 − w) falls, w = Ĵ^{_WEIGHT_BETA.value:g} at "
        f"τ_c={_WEIGHT_TEMPERATURE.value:g} (same problems, teacher-forced; spared: w < 0.3)")
  print(f"{'place':34}{'tokens':>8}{'mean w':>9}{'spared':>8}{'share':>8}")
  for r in rows:
    print(f"{r['place']:34}{r['tokens']:>8}{r['mean_weight']:>9.4f}{r['spared']:>8.2f}"
          f"{r['share']:>8.3f}")
  return rows


def main(_):
  _validate_flags()
  params, gpt, saved = checkpoints.load_model(_CHECKPOINT.value)
  # A reference ensemble is scored as its members' mixture; it has no single policy to sample.
  ensemble = dict(ensemble=checkpoints.ensemble_members(saved) > 0, epistemic=_EPISTEMIC.value)
  if ensemble["ensemble"]:
    print(f"{_CHECKPOINT.value}: an ensemble of {checkpoints.ensemble_members(saved)} models, "
          f"scored as their mixture; the failure and deviation analyses, which generate, are "
          f"skipped")
  n_max = int(saved["pretrain_max_digits"])
  vocabulary = tokenizer.Vocabulary.from_dict(saved["vocabulary"])
  digits = n_max + 1 if _DIGITS.value is None else _DIGITS.value
  _validate_digits(n_max, digits)
  rng = np.random.default_rng(_SEED.value)
  operands = arithmetic.sample_varying(rng, _NUM_PROBLEMS.value, digits)
  forced = critical_tokens.teacher_forced(
      params, gpt, operands, n_max, temperature=_TEMPERATURE.value,
      certainty_method=_CERTAINTY_METHOD.value,
      certainty_temperature=_CERTAINTY_TEMPERATURE.value, vocabulary=vocabulary, **ensemble)
  gap = critical_tokens.certainty_gap(forced.certainty, forced.critical_names)
  probability = critical_tokens.critical_token_probability(forced.probs, forced.greedy_correct,
                                                           forced.critical)

  print(f"{_NUM_PROBLEMS.value} problems of {digits} digits (varying), N={n_max}; teacher-forced "
        f"on correct completions; Ĵ = {_CERTAINTY_METHOD.value} "
        f"at τ_c={_CERTAINTY_TEMPERATURE.value}")
  print(gap_table(gap, n_max))
  print(f"critical-token probability at τ={_TEMPERATURE.value}: "
        f"{probability['mean_probability']:.4f}; problems with every critical token right under "
        f"greedy argmax: {100 * probability['all_greedy_right']:.1f}%")

  generate = not ensemble["ensemble"]
  failures = (_failure_report(params, gpt, vocabulary, rng, digits, n_max)
              if _FAILURES.value and generate else None)
  deviations = (_deviation_report(params, gpt, vocabulary, rng, digits, n_max)
                if _SAMPLED.value and generate else None)

  places = (_place_report(params, gpt, vocabulary, operands, n_max, ensemble)
            if _BY_PLACE.value else None)

  temperatures, betas = _grid_values()
  grid = []
  if betas and temperatures:
    grid = selectivity.teacher_forced_grid(params, gpt, operands, n_max,
                                           methods=_GRID_METHODS.value,
                                           certainty_temperatures=temperatures, betas=betas,
                                           vocabulary=vocabulary, **ensemble)
    print(f"\nselectivity of w = Ĵ^β (teacher-forced, same {_NUM_PROBLEMS.value} problems): mean "
          f"weight on critical and other tokens, share of Σ(1 − w) on critical tokens "
          f"({grid[0]['critical_tokens']} critical, {grid[0]['other_tokens']} other tokens)")
    print(selectivity_table(grid))

  a, b = (int(x) for x in operands[0])
  text, certainty = forced.completions[0], forced.certainty[0]
  print(f"\nexample, {a}+{b}, coloured by Ĵ (red: least certain, Ĵ={certainty.min():.4f}; "
        f"white: most certain, Ĵ={certainty.max():.4f}):")
  print(arithmetic.prompt(a, b) + critical_tokens.render_ansi(text, certainty), end="")
  title = (f"{a}+{b}: Ĵ = {_CERTAINTY_METHOD.value} at τ_c={_CERTAINTY_TEMPERATURE.value}, "
           f"teacher-forced (N={n_max})")
  with open(_HTML.value, "w", encoding="utf-8") as f:
    f.write(critical_tokens.render_html(text, certainty, title=title))
  print(f"wrote {_HTML.value}")

  print(json.dumps(dict(
      checkpoint=_CHECKPOINT.value, ensemble_members=checkpoints.ensemble_members(saved),
      epistemic=ensemble["epistemic"], n_max=n_max, digits=digits,
      num_problems=_NUM_PROBLEMS.value,
      certainty_method=_CERTAINTY_METHOD.value,
      certainty_temperature=_CERTAINTY_TEMPERATURE.value, temperature=_TEMPERATURE.value,
      delta_j_critical=gap["critical"]["mean"], delta_j_critical_std=gap["critical"]["std"],
      delta_j_by_name={name: s["mean"] for name, s in gap["by_name"].items()},
      delta_j_min_non_critical=gap["min_non_critical"],
      delta_j_mean_non_critical=gap["non_critical"]["mean"],
      paper_table_1=PAPER_TABLE_1.get(n_max),
      critical_token_probability=probability["mean_probability"],
      critical_all_greedy_right=probability["all_greedy_right"],
      failures=failures, deviations=deviations, selectivity=grid,
      reduction_by_place=places, html=_HTML.value)))


if __name__ == "__main__":
  _cli.run(main)
