"""Critical-token analysis: teacher-forced predictions, ΔĴ, probabilities, failures, renderings."""
import collections
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from critical_kl import arithmetic
from critical_kl import certainty as certainty_lib
from critical_kl import checkpoints
from critical_kl import critical_tokens
from critical_kl import model as model_lib
from critical_kl import tokenizer

N_MAX = 2
TINY = model_lib.GPTConfig(block_size=512, n_layer=1, n_head=2, n_embd=16, value_hidden=8)
OPERANDS = np.array([[123, 45], [7, 981], [250, 250]])


@pytest.fixture(scope="module")
def params():
  return model_lib.init_params(TINY, jax.random.key(0))


@pytest.fixture(scope="module")
def forced(params):
  return critical_tokens.teacher_forced(params, TINY, OPERANDS, N_MAX, batch_size=2)


def test_teacher_forced_shapes_and_contents(forced):
  assert len(forced.completions) == len(OPERANDS)
  for i, (a, b) in enumerate(OPERANDS):
    completion = arithmetic.scratchpad(int(a), int(b))
    assert forced.completions[i] == completion
    np.testing.assert_array_equal(forced.targets[i], tokenizer.encode(completion))
    for field in (forced.probs, forced.certainty, forced.argmax, forced.critical_names):
      assert field[i].shape == (len(completion),)
    np.testing.assert_array_equal(forced.critical[i],
                                  arithmetic.critical_mask(int(a), int(b), N_MAX))
    assert np.all((forced.probs[i] > 0) & (forced.probs[i] <= 1))
    assert np.all((forced.certainty[i] >= 0) & (forced.certainty[i] <= 1))
  # 123 with N = 2: ",3" on line 1, ",2" on line 2, and "1" alone on line 3 (its list is "[1]").
  assert sorted(set(forced.critical_names[0]) - {""}) == ["n+1_comma", "n+1_digit"]
  assert forced.critical[0].sum() == 5


def test_teacher_forced_matches_a_single_unpadded_pass(params, forced):
  """Batching and right padding change nothing: compare with one problem alone, by hand."""
  a, b = (int(x) for x in OPERANDS[1])
  prompt, completion = arithmetic.prompt(a, b), arithmetic.scratchpad(a, b)
  tokens = tokenizer.encode(prompt + completion)[None]
  logits = np.asarray(model_lib.forward(params, TINY, tokens).logits[0])
  predicting = logits[len(prompt) - 1:-1]  # position t predicts token t + 1
  log_probs = np.asarray(jax.nn.log_softmax(predicting / 1.0))
  expected = np.exp(log_probs[np.arange(len(completion)), tokenizer.encode(completion)])
  np.testing.assert_allclose(forced.probs[1], expected, rtol=1e-4)
  np.testing.assert_allclose(forced.certainty[1], certainty_lib.certainty(predicting), rtol=1e-4)
  np.testing.assert_array_equal(forced.argmax[1], predicting.argmax(-1))


def test_teacher_forced_rejects_unknown_method(params):
  with pytest.raises(ValueError, match="unknown certainty method 'entropy'"):
    critical_tokens.teacher_forced(params, TINY, OPERANDS, N_MAX, certainty_method="entropy")


def test_delta_certainty_by_hand():
  np.testing.assert_allclose(critical_tokens.delta_certainty([1.0, 0.5, 0.9, 0.8]),
                             [1.0 - 2.2 / 3, 0.5 - 2.7 / 3, 0.9 - 2.3 / 3, 0.8 - 2.4 / 3],
                             atol=1e-12)


def test_certainty_gap_by_hand():
  certainty = [np.array([1.0, 0.5, 0.9, 0.8]), np.array([0.6, 1.0, 1.0])]
  names = [np.array(["", "n+1_comma", "", "n+1_digit"]), np.array(["n+1_digit", "", ""])]
  gap = critical_tokens.certainty_gap(certainty, names)
  comma, digit_1, digit_2 = 0.5 - 2.7 / 3, 0.8 - 2.4 / 3, 0.6 - 1.0
  critical = [comma, digit_1, digit_2]
  assert gap["critical"]["count"] == 3
  np.testing.assert_allclose(gap["critical"]["mean"], np.mean(critical))
  np.testing.assert_allclose(gap["critical"]["std"], np.std(critical))
  np.testing.assert_allclose(gap["by_name"]["n+1_comma"]["mean"], comma)
  np.testing.assert_allclose(gap["by_name"]["n+1_digit"]["mean"], (digit_1 + digit_2) / 2)
  # Non-critical: 1.0 − 2.2/3, 0.9 − 2.3/3, and twice 1.0 − 0.8 = 0.2; the smallest is 0.1333.
  np.testing.assert_allclose(gap["min_non_critical"], 0.9 - 2.3 / 3)
  others = [1.0 - 2.2 / 3, 0.9 - 2.3 / 3, 0.2, 0.2]
  assert gap["non_critical"]["count"] == 4
  np.testing.assert_allclose(gap["non_critical"]["mean"], np.mean(others))
  assert gap["num_completions"] == 2


def test_certainty_gap_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="differ in shape"):
    critical_tokens.certainty_gap([np.ones(3)], [np.array(["", ""])])


def test_critical_token_probability_by_hand():
  probs = [np.array([0.9, 0.4, 0.8]), np.array([0.7, 0.2]), np.array([0.5])]
  right = [np.array([True, False, True]), np.array([True, True]), np.array([False])]
  critical = [np.array([False, True, True]), np.array([True, False]), np.array([False])]
  result = critical_tokens.critical_token_probability(probs, right, critical)
  np.testing.assert_allclose(result["mean_probability"], (0.4 + 0.8 + 0.7) / 3)
  assert result["all_greedy_right"] == 0.5  # problem 0 misses a critical token; problem 2 has none
  assert (result["num_tokens"], result["num_problems"]) == (3, 2)


def _wrong(text: str, offset: int, char: str) -> str:
  """`text` with `char` at `offset` and a wrong result line (5876+393 = 6269), as a failure has."""
  return (text[:offset] + char + text[offset + 1:]).replace("6 2 6 9\n", "6 2 7 9\n")


def test_failure_analysis():
  a, b = 5876, 393
  correct = arithmetic.scratchpad(a, b)
  comma = next(t["offset"] for t in arithmetic.critical_tokens(a, b, 3)
               if t["line"] == 1 and t["name"] == "n+1_comma")
  assert correct[comma:comma + 2] == ",6"
  closed_early = _wrong(correct, comma, "]")
  carry = correct.index("C=0")  # line 1's carry: not a critical token
  wrong_carry = _wrong(correct, carry + 2, "1")
  truncated = correct[:40]
  operands = np.array([[a, b]] * 4)
  result = critical_tokens.failure_analysis([closed_early, wrong_carry, truncated, correct],
                                            operands, n_max=3)
  assert result["num_problems"] == 4 and result["num_failures"] == 3
  assert result["critical_share"] == pytest.approx(1 / 3)
  assert result["first_errors"]["critical"] == collections.Counter({(",", "]"): 1})
  assert result["first_errors"]["non_critical"] == collections.Counter(
      {("0", "1"): 1, (correct[40], critical_tokens.END): 1})


def test_failure_analysis_without_failures():
  result = critical_tokens.failure_analysis([arithmetic.scratchpad(12, 3)], [[12, 3]], n_max=1)
  assert result["num_failures"] == 0 and result["critical_share"] is None


def test_first_error():
  assert critical_tokens.first_error("abc", "abc") is None
  assert critical_tokens.first_error("abx", "abc") == 2
  assert critical_tokens.first_error("ab", "abc") == 2
  assert critical_tokens.first_error("abcd", "abc") == 3


def test_render_html_escapes_and_has_one_span_per_character():
  text = "<scratch>\n[1,2] & 3\n"
  certainties = np.linspace(0.2, 1.0, len(text))
  page = critical_tokens.render_html(text, certainties, title="a <b> test")
  body = page[page.index("<pre>") + len("<pre>"):page.index("</pre>")]
  assert body.count("<span ") == len(text)
  assert ">&lt;</span>" in body and ">&gt;</span>" in body and ">&amp;</span>" in body
  assert "<scratch>" not in page and "<" not in body.replace("<span ", "").replace("</span>", "")
  assert "a &lt;b&gt; test" in page
  assert body.count("\n") == text.count("\n")
  assert "rgb(214,39,40)" in body and "rgb(255,255,255)" in body  # both ends of the scale


def test_render_ansi_colours_every_character():
  text = "ab\nc"
  out = critical_tokens.render_ansi(text, [0.0, 1.0, 0.5, 0.5], vmin=0.0, vmax=1.0)
  assert "48;2;214;39;40ma" in out and "48;2;255;255;255mb" in out
  assert out.count("\x1b[38;2;0;0;0;48;2;") == 3 and "\x1b[0m\n" in out
  with pytest.raises(ValueError, match="3 characters"):
    critical_tokens.render_ansi("abc", [0.5])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, params):
  directory = str(tmp_path_factory.mktemp("model") / "tiny")
  checkpoints.export(directory, params,
                     {"model": dict(vars(TINY)), "pretrain_max_digits": N_MAX})
  return directory


def _experiment(*flags, cwd):
  return subprocess.run([sys.executable, "-m", "experiments.critical_tokens", *flags],
                        cwd=cwd, capture_output=True, text=True, timeout=900,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_experiment_runs_end_to_end(exported, tmp_path):
  html = str(tmp_path / "example.html")
  proc = _experiment(f"--checkpoint={exported}", "--num_problems=4", "--failures=4",
                     f"--html={html}", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (summary["n_max"], summary["digits"], summary["num_problems"]) == (N_MAX, N_MAX + 1, 4)
  assert summary["delta_j_critical"] is not None
  assert summary["failures"]["num_problems"] == 4
  assert "ΔĴ" in proc.stdout and "first error at a critical token" in proc.stdout
  places = summary["reduction_by_place"]
  assert "where the reduction" in proc.stdout and places[-1]["place"].startswith("other")
  assert sum(r["tokens"] for r in places) > 4 * 20
  assert sum(r["share"] for r in places) == pytest.approx(1.0, abs=1e-6)
  with open(html, encoding="utf-8") as f:
    assert f.read().count("<span style=") > 100


def test_experiment_scores_an_ensemble_as_its_mixture(exported, params, tmp_path):
  """Two copies of a model: the mixture is the model, so every teacher-forced figure is the
  model's; nothing is generated."""
  ensemble = str(tmp_path / "ensemble")
  checkpoints.export(ensemble, jax.tree_util.tree_map(lambda x: np.stack([x, x]), params),
                     {"model": dict(vars(TINY)), "pretrain_max_digits": N_MAX,
                      "ensemble_members": 2})
  flags = ("--num_problems=4", "--grid_betas=10", "--grid_certainty_temperatures=1",
           f"--html={tmp_path / 'example.html'}")
  summaries = []
  for checkpoint in (exported, ensemble):
    proc = _experiment(f"--checkpoint={checkpoint}", "--failures=0", "--sampled=0", *flags,
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summaries.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  single, mixed = summaries
  assert (single["ensemble_members"], mixed["ensemble_members"]) == (0, 2)
  assert mixed["failures"] is None and mixed["deviations"] is None
  np.testing.assert_allclose(mixed["delta_j_critical"], single["delta_j_critical"], atol=1e-5)
  for name in ("weight_critical", "weight_other", "reduction_share"):
    np.testing.assert_allclose(mixed["selectivity"][0][name], single["selectivity"][0][name],
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("flags, message", [
    ((), "no checkpoint at"),
    (("--num_problems=0",), "--num_problems must be >= 1"),
    (("--certainty_method=entropy",), "unknown --certainty_method 'entropy'"),
])
def test_experiment_reports_bad_input_in_one_line(tmp_path, flags, message):
  proc = _experiment(f"--checkpoint={tmp_path / 'missing'}", *flags, cwd=tmp_path)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr
