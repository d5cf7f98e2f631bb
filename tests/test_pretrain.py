"""Pre-training: batches, loss masking, learning, and exact resumption from a checkpoint."""
import shutil

import jax
import numpy as np
import pytest

from critical_kl import arithmetic
from critical_kl import checkpoints
from critical_kl import pretrain
from critical_kl import pretrain_config
from critical_kl import tokenizer
from conftest import tiny_pretrain_config as tiny_config  # tests/ is on sys.path under pytest




def typed(c):
  return pretrain_config.PretrainConfig.from_config_dict(c)


def test_batch_masks_the_prompt_only():
  c = tiny_config()
  tokens, positions, mask = pretrain.make_batch(typed(c), step=0)
  text = tokenizer.decode(tokens[0])
  prompt_len = text.index("Target:") + len("Target:")
  assert mask[0, :prompt_len].sum() == 0
  assert mask[0].sum() == len(text) - prompt_len
  assert text.startswith("Input:\n") and text.endswith("\n")
  assert positions.shape == tokens.shape and positions.max() < pretrain.model_config(c).block_size


def test_batches_are_deterministic_per_step():
  c = tiny_config()
  a, b = pretrain.make_batch(typed(c), 5), pretrain.make_batch(typed(c), 5)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], pretrain.make_batch(typed(c), 6)[0])


def test_fixed_positions_without_random_start():
  c = tiny_config(random_start_positions=False)
  _, positions, _ = pretrain.make_batch(typed(c), 0)
  np.testing.assert_array_equal(positions[0], np.arange(positions.shape[1]))


@pytest.mark.parametrize("a, b", [(123456, 78), (91, 987654)])
def test_held_out_scopes(a, b):
  """ "decisions" skips the critical tokens and each `]` after them; "lines" every token up to the
  end of the third line (the last with a critical token), and none after it."""
  text = arithmetic.scratchpad(a, b)
  critical = arithmetic.critical_mask(a, b, 5)
  decisions = pretrain.held_out_mask(a, b, 5, "decisions")
  assert set(np.flatnonzero(decisions & ~critical)) == {
      i + 1 for i in np.flatnonzero(critical) if text[i + 1] == "]"}
  lines = pretrain.held_out_mask(a, b, 5, "lines")
  scratch = text.index("<scratch>")
  end = [i for i, ch in enumerate(text) if ch == "\n" and i > scratch][3]  # the third line's
  assert lines[:end + 1].all() and not lines[end + 1:].any()
  assert not pretrain.held_out_mask(12345, 678, 5, "lines").any()


def test_held_out_lines_leave_the_later_lines_in_the_loss():
  c = tiny_config(held_out_digits=1, held_out_fraction=1.0, held_out_scope="lines")
  tokens, _, mask = pretrain.make_batch(typed(c), 0)
  for row, mask_row in zip(tokens, mask):
    text = tokenizer.decode(row)
    start = text.index("Target:") + len("Target:")
    scratch = text.index("<scratch>", start)
    skipped_to = [i for i, ch in enumerate(text) if ch == "\n" and i > scratch][3]
    assert not mask_row[:skipped_to + 1].any()
    assert mask_row[skipped_to + 1:].sum() == len(text) - skipped_to - 1


def test_unknown_held_out_scope_is_refused():
  with pytest.raises(ValueError, match="held_out_scope"):
    typed(tiny_config(held_out_digits=1, held_out_scope="prompt"))


def test_block_size_fits_n_plus_3_rollouts():
  gpt = pretrain.model_config(tiny_config())
  assert gpt.block_size >= arithmetic.max_sequence_length(5) + arithmetic.EPISODE_SLACK


def test_loss_decreases(tmp_path):
  c = tiny_config(num_steps=40, learning_rate=3e-3, checkpoint_every=40, log_every=40)
  logs = []
  state = pretrain.train(c, str(tmp_path), log=logs.append)
  batch = pretrain.make_batch(typed(c), 10_000)
  gpt = pretrain.model_config(c)
  init = pretrain.init_state(typed(c), pretrain.make_optimizer(typed(c)))["params"]
  before = pretrain.completion_loss(init, gpt, *batch)
  after = pretrain.completion_loss(state["params"], gpt, *batch)
  assert after < 0.85 * before  # 3.71 (uniform-ish) → about 2.9 after 40 steps
  assert any("steps/s" in line and "ETA" in line for line in logs)


def test_resume_gives_the_uninterrupted_result(tmp_path):
  c = tiny_config()
  straight = pretrain.train(c, str(tmp_path / "a"), log=lambda _: None)
  pretrain.train(c, str(tmp_path / "b"), log=lambda _: None)
  # Simulate a run killed after step 3: drop the final checkpoint, start again.
  shutil.rmtree(tmp_path / "b" / "checkpoints" / "6")
  logs = []
  resumed = pretrain.train(c, str(tmp_path / "b"), log=logs.append)
  assert any("resumed from step 3" in line for line in logs)
  jax.tree_util.tree_map(np.testing.assert_array_equal, straight["params"], resumed["params"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, straight["opt_state"],
                         resumed["opt_state"])


def test_checkpoint_of_another_model_is_refused(tmp_path):
  pretrain.train(tiny_config(num_steps=3), str(tmp_path), log=lambda _: None)
  other = tiny_config(num_steps=3)
  other.model.n_embd = 32
  with pytest.raises(checkpoints.CheckpointError, match="n_embd"):
    pretrain.train(other, str(tmp_path), log=lambda _: None)


def test_overwrite_starts_afresh(tmp_path):
  pretrain.train(tiny_config(num_steps=3), str(tmp_path), log=lambda _: None)
  logs = []
  pretrain.train(tiny_config(num_steps=3), str(tmp_path), overwrite=True, log=logs.append)
  assert not any("resumed" in line for line in logs)


def test_export_and_load_model(tmp_path):
  c = tiny_config(num_steps=3)
  state = pretrain.train(c, str(tmp_path / "run"), log=lambda _: None)
  checkpoints.export(str(tmp_path / "model"), state["params"], pretrain.saved_config(c))
  params, gpt, saved = checkpoints.load_model(str(tmp_path / "model"))
  assert gpt == pretrain.model_config(c) and saved["pretrain_max_digits"] == 2
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, state["params"])
  # A training directory loads too (its latest step).
  params2, _, _ = checkpoints.load_model(str(tmp_path / "run"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, params2, state["params"])
  with pytest.raises(checkpoints.CheckpointError, match="exists"):
    checkpoints.export(str(tmp_path / "model"), state["params"], pretrain.saved_config(c))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint"):
    checkpoints.load_model(str(tmp_path / "nothing"))


def test_bad_digits_raise():
  with pytest.raises(ValueError, match="pretrain_max_digits"):
    typed(tiny_config(pretrain_max_digits=0))
