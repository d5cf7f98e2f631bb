"""Evaluation: the one teacher-forced scorer against a float64 reference, and what is built on it
(the RL reference pass, the critical-token probability, the critical-token analysis)."""
import jax
import jax.numpy as jnp
import numpy as np

from critical_kl import certainty as certainty_lib
from critical_kl import critical_tokens
from critical_kl import evaluation
from critical_kl import model as model_lib
from critical_kl import rl_config
from critical_kl import rl
from critical_kl import runs as runs_lib
from critical_kl import runs_evaluation
from critical_kl import task as task_lib
from critical_kl import trajectory as trajectory_lib
from critical_kl.configs import rl_default
from conftest import np_log_softmax  # tests/ is on sys.path under pytest

TINY = model_lib.GPTConfig(block_size=256, n_layer=1, n_head=2, n_embd=16, value_hidden=8)
OPERANDS = np.array([[123, 45], [7, 981]])


def _setup():
  params = model_lib.init_params(TINY, jax.random.key(0))
  return params, task_lib.teacher_set(OPERANDS, n_max=2)


def test_scores_match_a_float64_reference():
  params, teacher = _setup()
  tokens = jnp.asarray(teacher.tokens)
  scores = evaluation.teacher_forced_scores(params, TINY, tokens, temperature=2.0,
                                            certainty_method="max_prob",
                                            certainty_temperature=0.5)
  logits = np.asarray(model_lib.forward(params, TINY, tokens).logits)
  # Entry t is about token t, predicted from the logits at t - 1.
  np.testing.assert_allclose(scores.logits[:, 1:], logits[:, :-1], rtol=1e-6)
  logp = np_log_softmax(logits[:, :-1], 2.0)
  want = np.take_along_axis(logp, teacher.tokens[:, 1:, None], axis=-1)[..., 0]
  np.testing.assert_allclose(scores.logp[:, 1:], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(scores.certainty[:, 1:],
                             np.exp(np_log_softmax(logits[:, :-1], 0.5)).max(-1), rtol=1e-5)
  assert evaluation.teacher_forced_scores(params, TINY, tokens).certainty is None


def test_critical_probability_is_the_mean_over_critical_tokens():
  params, teacher = _setup()
  logp = evaluation.teacher_forced_scores(params, TINY, jnp.asarray(teacher.tokens)).logp
  critical = teacher.critical.astype(bool)
  assert critical.sum() > 0
  want = np.exp(np.asarray(logp))[critical].mean()
  got = evaluation.critical_probability(params, TINY, jnp.asarray(teacher.tokens),
                                        jnp.asarray(teacher.critical))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Stacked runs: one figure per run, each that of its own parameters.
  other = model_lib.init_params(TINY, jax.random.key(1))
  stacked = runs_lib.stack([params, other])
  figures = runs_evaluation.make_runs_critical_probability(TINY)(stacked, teacher)
  np.testing.assert_allclose(figures[0], got, rtol=1e-5)
  np.testing.assert_allclose(
      figures[1], evaluation.critical_probability(other, TINY, jnp.asarray(teacher.tokens),
                                                  jnp.asarray(teacher.critical)), rtol=1e-5)


def test_reference_pass_is_the_scorer_at_the_config_settings():
  params, teacher = _setup()
  c = rl_default.get_config()
  c.update(temperature=1.5, certainty_method="negentropy", certainty_temperature=3.0)
  config = rl_config.RLConfig.from_config_dict(c)
  zeros = jnp.zeros(teacher.tokens.shape, jnp.float32)
  traj = trajectory_lib.Trajectory(
      tokens=jnp.asarray(teacher.tokens), mask=jnp.asarray(teacher.mask), logp=zeros,
      values=zeros, entropy=zeros, rewards=zeros, prompt_lengths=jnp.zeros(2, jnp.int32),
      lengths=jnp.zeros(2, jnp.int32), termination=jnp.zeros(2, jnp.int32),
      solved=jnp.zeros(2, bool), ref_logp=zeros, certainty=zeros, critical=zeros > 0)
  filled, ref_logits = rl.reference_pass(params, TINY, traj, config)
  scores = evaluation.teacher_forced_scores(params, TINY, traj.tokens, temperature=1.5,
                                            certainty_method="negentropy",
                                            certainty_temperature=3.0)
  np.testing.assert_array_equal(filled.ref_logp, scores.logp)
  np.testing.assert_array_equal(filled.certainty, scores.certainty)
  np.testing.assert_array_equal(ref_logits, scores.logits)
  np.testing.assert_allclose(filled.certainty,
                             certainty_lib.certainty(scores.logits, "negentropy", 3.0))


def test_critical_token_analysis_reads_the_scorer():
  params, teacher = _setup()
  forced = critical_tokens.teacher_forced(params, TINY, OPERANDS, 2, temperature=1.0,
                                          certainty_method="max_prob", certainty_temperature=2.0)
  scores = evaluation.teacher_forced_scores(params, TINY, jnp.asarray(teacher.tokens),
                                            certainty_method="max_prob",
                                            certainty_temperature=2.0)
  for i in range(len(OPERANDS)):
    on = teacher.mask[i] > 0
    np.testing.assert_allclose(forced.probs[i], np.exp(np.asarray(scores.logp)[i][on]), rtol=1e-5)
    np.testing.assert_allclose(forced.certainty[i], np.asarray(scores.certainty)[i][on],
                               rtol=1e-5)
    np.testing.assert_array_equal(forced.critical[i], teacher.critical[i][on] > 0)
