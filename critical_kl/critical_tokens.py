"""Critical tokens seen through the model (SPEC §6): certainty gap ΔĴ, probabilities, failures.

`teacher_forced` runs the model once over the *correct* prompt + completion of each problem
(`task.correct_completions`, scored by `evaluation.teacher_forced_scores`) and returns, for every
completion character, the model's probability of that character, its certainty Ĵ there, its most
likely token and whether the character is a critical token. The rest are pure
functions of those arrays (or of generated texts), so they can be tested on hand-made numbers:

- `certainty_gap`: ΔĴ of paper Table 1, critical tokens against all others;
- `critical_token_probability`: π(correct | correct prefix) on critical tokens, tracked through RL;
- `failure_analysis`: where greedy generations first go wrong;
- `render_ansi`, `render_html`: a completion coloured by Ĵ, as in paper Figure 5.

Per-problem results are ragged (completions differ in length): lists with one numpy array per
problem, entry t of which is about character t of the completion.
"""
import collections
import dataclasses
import functools
import html
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from critical_kl import arithmetic
from critical_kl import certainty as certainty_lib
from critical_kl import evaluation
from critical_kl import model as model_lib
from critical_kl import task as task_lib
from critical_kl import tokenizer

# The generated "character" at a first error where the generation stopped before the expected text.
END = "<end>"


@dataclasses.dataclass(frozen=True)
class TeacherForced:
  """The model's predictions along the correct completions of n problems.

  Every list holds one array per problem, over the C_i characters of `completions[i]`; entry t is
  about character t, predicted from the prompt and the correct characters before it.

  Attributes:
    operands: int64 [n, 2], the problems (a, b).
    completions: the n correct completions, `arithmetic.scratchpad(a, b)`.
    targets: int32 [C_i], token ids of the completion.
    probs: float32 [C_i], π(correct character | correct prefix) at the requested temperature.
    certainty: float32 [C_i], Ĵ of the prediction at that character (`certainty.certainty`).
    argmax: int32 [C_i], the most likely token there (what greedy decoding would pick).
    critical_names: str [C_i], the critical token's name (`n+j_digit` / `n+j_comma`, SPEC §6) or ""
      where the character is not critical.
  """
  operands: np.ndarray
  completions: list[str]
  targets: list[np.ndarray]
  probs: list[np.ndarray]
  certainty: list[np.ndarray]
  argmax: list[np.ndarray]
  critical_names: list[np.ndarray]

  @property
  def critical(self) -> list[np.ndarray]:
    """bool [C_i], True on critical tokens (`arithmetic.critical_mask`)."""
    return [names != "" for names in self.critical_names]

  @property
  def greedy_correct(self) -> list[np.ndarray]:
    """bool [C_i], the most likely token is the correct one."""
    return [top == target for top, target in zip(self.argmax, self.targets)]


@functools.partial(jax.jit, static_argnames=("gpt_config", "certainty_method", "ensemble",
                                             "epistemic"))
def _predict(params, gpt_config: model_lib.GPTConfig, tokens: jnp.ndarray, temperature: float,
             certainty_method: str, certainty_temperature: float, ensemble: bool = False,
             epistemic: bool = False):
  """One teacher-forced pass over tokens int32 [B, T].

  Returns:
    logp [B, T] (at `temperature`), certainty [B, T] and argmax int32 [B, T], entry t about token t
    given tokens [:t]; entry 0 has no prefix and is meaningless.
  """
  scores = evaluation.teacher_forced_scores(params, gpt_config, tokens, temperature=temperature,
                                            certainty_method=certainty_method,
                                            certainty_temperature=certainty_temperature,
                                            ensemble=ensemble, epistemic=epistemic)
  return scores.logp, scores.certainty, jnp.argmax(scores.logits, axis=-1).astype(jnp.int32)


def _critical_names(a: int, b: int, n_max: int) -> np.ndarray:
  """str [len(scratchpad(a, b))]: each critical token's name, "" elsewhere."""
  names = np.full(len(arithmetic.scratchpad(a, b)), "", dtype=object)
  for token in arithmetic.critical_tokens(a, b, n_max):
    names[token["offset"]] = token["name"]
  return names.astype(str)


def teacher_forced(params, gpt_config: model_lib.GPTConfig, operands: np.ndarray, n_max: int, *,
                   temperature: float = 1.0, certainty_method: str = "negentropy_max_prob",
                   certainty_temperature: float = 4.0, batch_size: int = 64,
                   vocabulary: tokenizer.Vocabulary = tokenizer.DEFAULT, ensemble: bool = False,
                   epistemic: bool = False) -> TeacherForced:
  """Runs the model along the correct completion of every problem.

  Each text (prompt + correct completion) sits at positions 0..T-1, padded on the right to the
  longest text of the set, and the set goes through in batches of `batch_size` (the last one
  padded with copies), so one compilation serves it all.

  Args:
    params: GPT parameters.
    gpt_config: the GPT's config.
    operands: int [n, 2], the problems (a, b).
    n_max: N, the largest operand length of pre-training; it places the critical tokens.
    temperature: τ of the probabilities `probs`.
    certainty_method: one of `certainty.CERTAINTY_METHODS`.
    certainty_temperature: τ_c of Ĵ (SPEC §5; the authors use 4).
    batch_size: problems per forward pass.
    vocabulary: the model's vocabulary.
    ensemble: `params` are a reference ensemble's stacked members; the predictions are their
      mixture's (`evaluation.teacher_forced_scores`).
    epistemic: with `ensemble`, Ĵ minus the members' disagreement.

  Returns:
    A `TeacherForced` with one array per problem.
  """
  certainty_lib.check_method(certainty_method)
  if temperature <= 0 or certainty_temperature <= 0:
    raise ValueError(f"temperatures must be > 0, got {temperature} and {certainty_temperature}")
  operands = np.asarray(operands, dtype=np.int64).reshape(-1, 2)
  if not len(operands):
    raise ValueError("teacher_forced needs at least one problem")
  pairs = [(int(a), int(b)) for a, b in operands]
  correct = task_lib.correct_completions(operands, n_max, vocabulary=vocabulary)
  tokens = correct.tokens
  if tokens.shape[1] > gpt_config.block_size:
    raise ValueError(f"the longest problem has {tokens.shape[1]} tokens, more than the model's "
                     f"block_size ({gpt_config.block_size})")
  batch = min(batch_size, len(tokens))
  outputs = []
  for start in range(0, len(tokens), batch):
    chunk = tokens[start:start + batch]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
    out = _predict(params, gpt_config, jnp.asarray(padded), temperature, certainty_method,
                   certainty_temperature, ensemble, epistemic)
    outputs.append([np.asarray(x)[:len(chunk)] for x in out])
  logp, certainty, argmax = (np.concatenate(parts) for parts in zip(*outputs))
  spans = [slice(int(p), int(n)) for p, n in zip(correct.prompt_lengths, correct.lengths)]
  return TeacherForced(
      operands=operands, completions=[arithmetic.scratchpad(a, b) for a, b in pairs],
      targets=[tokens[i, s] for i, s in enumerate(spans)],
      probs=[np.exp(logp[i, s]) for i, s in enumerate(spans)],
      certainty=[certainty[i, s] for i, s in enumerate(spans)],
      argmax=[argmax[i, s] for i, s in enumerate(spans)],
      critical_names=[_critical_names(a, b, n_max) for a, b in pairs])


def delta_certainty(certainty: np.ndarray) -> np.ndarray:
  """ΔĴ of every token of one completion: its Ĵ minus the mean Ĵ of the other tokens.

  Args:
    certainty: [C], Ĵ along the completion, C ≥ 2.

  Returns:
    float64 [C].
  """
  c = np.asarray(certainty, dtype=np.float64)
  if c.ndim != 1 or c.size < 2:
    raise ValueError(f"ΔĴ needs a 1-D certainty array of at least 2 tokens, got shape {c.shape}")
  return c - (c.sum() - c) / (c.size - 1)


def _stats(values: Sequence[float]) -> dict:
  """mean, std (population) and count; mean and std are None without values."""
  if not len(values):
    return dict(mean=None, std=None, count=0)
  return dict(mean=float(np.mean(values)), std=float(np.std(values)), count=len(values))


def certainty_gap(certainty: Sequence[np.ndarray], critical_names: Sequence[np.ndarray]) -> dict:
  """The certainty gap ΔĴ of paper Table 1 (SPEC §6).

  ΔĴ of a token = Ĵ at that token − mean Ĵ over the other tokens of the same completion. [ours]
  The certainties come from `teacher_forced`, i.e. the model is teacher-forced on *correct*
  completions (the paper uses 50 generations); the temperature of Ĵ is the caller's to report.

  Args:
    certainty: one array [C_i] of Ĵ per completion.
    critical_names: one str array [C_i] per completion, as `TeacherForced.critical_names`.

  Returns:
    critical: dict(mean, std, count) of ΔĴ over all critical tokens of all completions;
    by_name: the same for each critical token name (e.g. "n+1_digit", "n+1_comma");
    non_critical: dict(mean, std, count) of ΔĴ over non-critical tokens. [ours] With a few
      less certain critical tokens among hundreds, this mean is small and positive by
      construction, of the order of the paper's "smallest value over non-critical tokens"
      (+0.0002..+0.0012); the per-token minimum below is positive only when every non-critical
      token is at least as certain as its completion's average. Both are reported;
    min_non_critical: the smallest ΔĴ over non-critical tokens (None if there are none);
    num_completions: n.
  """
  critical, by_name, others = [], collections.defaultdict(list), []
  for c, names in zip(certainty, critical_names, strict=True):
    names = np.asarray(names)
    delta = delta_certainty(c)
    if delta.shape != names.shape:
      raise ValueError(f"certainty {delta.shape} and critical_names {names.shape} differ in shape")
    is_critical = names != ""
    critical.extend(delta[is_critical])
    others.extend(delta[~is_critical])
    for name, d in zip(names[is_critical], delta[is_critical]):
      by_name[str(name)].append(d)
  return dict(critical=_stats(critical),
              by_name={name: _stats(v) for name, v in sorted(by_name.items())},
              non_critical=_stats(others),
              min_non_critical=float(min(others)) if others else None,
              num_completions=len(certainty))


def critical_token_probability(probs: Sequence[np.ndarray], greedy_correct: Sequence[np.ndarray],
                               critical: Sequence[np.ndarray]) -> dict:
  """Critical-token probability (SPEC §6), teacher-forced on correct completions.

  Args:
    probs: one array [C_i] per problem, π(correct token | correct prefix).
    greedy_correct: one bool array [C_i] per problem, the argmax is the correct token.
    critical: one bool array [C_i] per problem, the critical mask.

  Returns:
    mean_probability: mean of `probs` over all critical tokens (None if there are none);
    all_greedy_right: share of the problems with critical tokens whose critical tokens are all
      predicted right by the argmax (None if no problem has critical tokens);
    num_tokens, num_problems: the critical tokens and the problems having some.
  """
  on_critical, all_right = [], []
  for p, right, mask in zip(probs, greedy_correct, critical, strict=True):
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
      on_critical.extend(np.asarray(p)[mask])
      all_right.append(bool(np.all(np.asarray(right)[mask])))
  return dict(mean_probability=float(np.mean(on_critical)) if on_critical else None,
              all_greedy_right=float(np.mean(all_right)) if all_right else None,
              num_tokens=len(on_critical), num_problems=len(all_right))


def first_error(generated: str, expected: str) -> int | None:
  """Index of the first character where `generated` differs from `expected`, None if equal.

  A generation that stops early errs at its length; one that runs on errs at len(expected).
  """
  for i, (g, e) in enumerate(zip(generated, expected)):
    if g != e:
      return i
  return None if len(generated) == len(expected) else min(len(generated), len(expected))


def failure_analysis(completions: Sequence[str], operands: np.ndarray, n_max: int) -> dict:
  """Where failed generations first leave the correct scratchpad.

  A failure is a completion that `arithmetic.is_correct` rejects. Its first error is the first
  character where it differs from `arithmetic.scratchpad(a, b)`; the prefix before it is right, so
  the model made that choice in the context of teacher forcing, and the error is critical when
  the expected character there is a critical token for `n_max` (SPEC §6).

  Args:
    completions: n generated completions.
    operands: int [n, 2], their problems.
    n_max: N, the largest operand length of pre-training.

  Returns:
    num_problems, num_failures;
    critical_share: share of the failures whose first error is a critical token (None without
      failures);
    first_errors: {"critical": Counter, "non_critical": Counter} of (expected char, generated
      char) at the first errors; the generated char is `END` where the generation stopped early.
  """
  operands = np.asarray(operands).reshape(-1, 2)
  if len(completions) != len(operands):
    raise ValueError(f"{len(completions)} completions for {len(operands)} problems")
  counts = {"critical": collections.Counter(), "non_critical": collections.Counter()}
  for text, (a, b) in zip(completions, operands):
    a, b = int(a), int(b)
    if arithmetic.is_correct(text, a, b):
      continue
    expected = arithmetic.scratchpad(a, b)
    # A wrong result line means the texts differ, so `first_error` is not None here.
    i = first_error(text, expected)
    critical = i < len(expected) and arithmetic.critical_mask(a, b, n_max)[i]
    counts["critical" if critical else "non_critical"][(expected[i] if i < len(expected) else END,
                  text[i] if i < len(text) else END)] += 1
  failures = sum(c.total() for c in counts.values())
  return dict(num_problems=len(operands), num_failures=failures,
              critical_share=counts["critical"].total() / failures if failures else None,
              first_errors=counts)


# Colour scale of the renderings: the least certain character red, the most certain white.
_LOW = np.array([214, 39, 40])
_HIGH = np.array([255, 255, 255])


def _colours(text: str, certainties, vmin: float | None,
             vmax: float | None) -> tuple[np.ndarray, float, float]:
  """RGB per character on a scale from vmin (red) to vmax (white).

  The scale defaults to the data's range: stretched so, a gap of a few hundredths is visible, as it
  is on critical tokens at τ_c = 4. Pass vmin=0, vmax=1 for an absolute scale.

  Returns:
    int [len(text), 3] colours, and the vmin and vmax used.
  """
  c = np.asarray(certainties, dtype=np.float64)
  if c.shape != (len(text),):
    raise ValueError(f"{len(text)} characters but certainties of shape {c.shape}")
  lo = (float(c.min()) if c.size else 0.0) if vmin is None else vmin
  hi = (float(c.max()) if c.size else 1.0) if vmax is None else vmax
  frac = np.clip((c - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
  return np.rint(_LOW + frac[:, None] * (_HIGH - _LOW)).astype(int), lo, hi


def render_ansi(text: str, certainties, *, vmin: float | None = None,
                vmax: float | None = None) -> str:
  """The text with each character's background coloured by Ĵ (24-bit ANSI escape codes).

  Args:
    text: C characters, e.g. a completion.
    certainties: [C], Ĵ of each character.
    vmin, vmax: Ĵ shown fully red and white; default the smallest and largest of `certainties`.

  Returns:
    The escaped text; colours are reset before each newline so that they do not fill the line.
  """
  colours, _, _ = _colours(text, certainties, vmin, vmax)
  out = []
  for char, (r, g, b) in zip(text, colours):
    out.append("\x1b[0m\n" if char == "\n" else f"\x1b[38;2;0;0;0;48;2;{r};{g};{b}m{char}")
  return "".join(out) + "\x1b[0m"


def render_html(text: str, certainties, *, title: str = "Certainty of the reference model",
                vmin: float | None = None, vmax: float | None = None) -> str:
  """A self-contained HTML page: one span per character, background coloured by Ĵ.

  Each span's tooltip gives the character and its Ĵ; a newline shows as "↵" and breaks the line.
  A legend gives the Ĵ of the two ends of the colour scale.

  Args:
    text: C characters, e.g. a completion.
    certainties: [C], Ĵ of each character.
    title: page title and heading.
    vmin, vmax: as for `render_ansi`.

  Returns:
    The HTML page.
  """
  colours, lo, hi = _colours(text, certainties, vmin, vmax)
  spans = []
  for char, value, (r, g, b) in zip(text, np.asarray(certainties, np.float64), colours):
    tip = html.escape(f"{char!r} Ĵ={value:.4f}", quote=True)
    shown = "↵" if char == "\n" else html.escape(char)
    spans.append(f'<span style="background:rgb({r},{g},{b})" title="{tip}">{shown}</span>'
                 + ("\n" if char == "\n" else ""))
  heading = html.escape(title)
  low, high = (",".join(map(str, rgb)) for rgb in (_LOW, _HIGH))
  return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{heading}</title>
<style>body{{font-family:sans-serif}} pre{{font-size:15px;line-height:1.5}}
.bar{{display:inline-block;width:240px;height:14px;vertical-align:middle;
background:linear-gradient(to right,rgb({low}),rgb({high}));
border:1px solid #999}}</style></head>
<body><h3>{heading}</h3>
<p>Ĵ = {lo:.4f} (least certain) <span class="bar"></span> Ĵ = {hi:.4f} (most certain);
hover over a character for its value.</p>
<pre>{"".join(spans)}</pre>
</body></html>
"""
