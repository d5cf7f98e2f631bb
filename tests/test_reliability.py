"""Failures a user meets, each as one `error:` line: runs that diverge, damaged or foreign
checkpoints; and runs killed with SIGKILL at a random point that resume to the uninterrupted
result, bit for bit (same machine, same versions: BUILD.md, "Determinism")."""
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from critical_kl import checkpoints
from critical_kl import divergence
from critical_kl import finetune
from critical_kl.configs import rl_default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_PRETRAIN = ["--config.pretrain_max_digits=1", "--config.model.n_layer=1",
                 "--config.model.n_head=2", "--config.model.n_embd=16",
                 "--config.model.value_hidden=8", "--config.batch_size=4",
                 "--config.warmup_steps=0", "--config.log_every=1", "--config.checkpoint_every=2",
                 "--config.eval_num_examples=2"]


def _tiny_rl(model: str) -> list[str]:
  return [f"--config.checkpoint={model}", "--config.num_iterations=6",
          "--config.episodes_per_collect=4", "--config.num_minibatches=2",
          "--config.eval_episodes=2", "--config.critical_eval_problems=2",
          "--config.matched_problems=2", "--config.checkpoint_every=1",
          "--config.temperature=2.0", "--config.arms=standard,prioritized"]


def _env() -> dict:
  # The persistent compilation cache of conftest.py, for the subprocesses too.
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")


def _run(module: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc, status: int, *fragments: str) -> str:
  """The process failed with `status` and printed exactly one line, an `error:` line."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == status, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


def _latest_state(workdir) -> dict:
  """The raw state of the latest checkpoint of a run's workdir, as numpy arrays."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  return ocp.PyTreeCheckpointer().restore(os.path.join(ckpt_dir, str(step), "state"))


def _largest_file(directory) -> str:
  files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names]
  return max(files, key=os.path.getsize)


def _damage(path: str, how: str) -> None:
  size = os.path.getsize(path)
  if how == "truncated":
    with open(path, "r+b") as f:
      f.truncate(size // 2)
  else:  # overwritten with bytes that are no valid data
    with open(path, "wb") as f:
      f.write(b"\x00\xff" * (size // 2))


# ------------------------------------------------------------------------------------------------
# Runs that diverge.


def test_pretraining_stops_at_the_first_nan_and_keeps_the_last_good_checkpoint(tmp_path):
  assert _run("experiments.pretrain", f"--workdir={tmp_path}", *TINY_PRETRAIN,
              "--config.num_steps=2").returncode == 0
  proc = _run("experiments.pretrain", f"--workdir={tmp_path}", *TINY_PRETRAIN,
              "--config.num_steps=12", "--config.learning_rate=1e6", "--config.grad_clip=1e9")
  line = _one_error_line(proc, 3, "the pre-training loss is nan")
  step = int(line.split("step ")[1].split(":")[0])
  assert step > 2
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert saved and max(saved) < step and f"nothing saved after step {max(saved)}" in line
  params, _, _ = checkpoints.load_model(str(tmp_path))
  assert divergence.all_finite(params)


def test_save_refuses_non_finite_state(tmp_path):
  mngr = checkpoints.manager(str(tmp_path))
  checkpoints.save(mngr, 1, dict(w=np.ones(3, np.float32)), dict(model={}))
  with pytest.raises(divergence.DivergenceError, match="step 2: the parameters .* not finite"):
    checkpoints.save(mngr, 2, dict(w=np.array([1.0, np.inf], np.float32)), dict(model={}))
  assert mngr.all_steps() == [1]


def test_rl_stops_at_the_first_non_finite_metric(tiny_model, tmp_path):
  c = rl_default.get_config()
  c.update(checkpoint=tiny_model, num_iterations=3, episodes_per_collect=4, num_minibatches=2,
           eval_episodes=2, critical_eval_problems=2, matched_problems=2, checkpoint_every=1,
           temperature=2.0, learning_rate=1e9)
  with pytest.raises(divergence.DivergenceError, match=r"iteration \d, run prioritized seed 0: "):
    finetune.finetune(c, str(tmp_path), log=lambda _: None)
  # Whatever was saved before the failure is finite.
  if any(d.isdigit() for d in os.listdir(tmp_path / "checkpoints")):
    assert divergence.all_finite(_latest_state(tmp_path))


# ------------------------------------------------------------------------------------------------
# Damaged or foreign checkpoints.


@pytest.fixture
def model_copy(tiny_model, tmp_path):
  path = tmp_path / "model"
  shutil.copytree(tiny_model, path)
  return path


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_damaged_data_file(model_copy, how):
  _damage(_largest_file(model_copy / "params"), how)
  proc = _run("experiments.evaluate", f"--checkpoint={model_copy}", "--digits=2",
              "--num_examples=2")
  _one_error_line(proc, 2, str(model_copy), "is damaged")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_late_echoes_of_a_damaged_read_are_dropped(model_copy):
  """Orbax's other failed reads may be reported by asyncio whenever they are collected (in CI: at
  exit, as 77 lines of tracebacks after the error line); reports about the damaged model are
  dropped, any other asyncio record still gets through."""
  _damage(_largest_file(model_copy / "params"), "overwritten")
  with pytest.raises(checkpoints.CheckpointError, match="is damaged"):
    checkpoints.load_model(str(model_copy))
  seen = []
  handler = logging.Handler()
  handler.emit = seen.append
  asyncio_logger = logging.getLogger("asyncio")
  asyncio_logger.addHandler(handler)
  try:
    asyncio_logger.error("Future exception was never retrieved\nfuture: <Future finished "
                         f"exception=ValueError('Error reading in {model_copy}/params/')>")
    asyncio_logger.error("Future exception was never retrieved\nfuture: elsewhere")
  finally:
    asyncio_logger.removeHandler(handler)
  assert [r.getMessage().splitlines()[1] for r in seen] == ["future: elsewhere"]


def test_missing_params(model_copy):
  shutil.rmtree(model_copy / "params")
  proc = _run("experiments.evaluate", f"--checkpoint={model_copy}", "--digits=2",
              "--num_examples=2")
  _one_error_line(proc, 2, str(model_copy), "neither params/ nor state/")


def test_config_that_does_not_parse(model_copy):
  (model_copy / "config" / "metadata").write_text("{not json")
  proc = _run("experiments.critical_tokens", f"--checkpoint={model_copy}", "--num_problems=2",
              "--failures=0", "--grid_betas=", f"--html={model_copy}/x.html")
  _one_error_line(proc, 2, str(model_copy / "config" / "metadata"), "cannot be read")


def test_checkpoint_of_another_model(model_copy):
  """A config whose model is not the one whose arrays are stored (e.g. copied from elsewhere)."""
  path = model_copy / "config" / "metadata"
  config = json.loads(path.read_text())
  config["model"]["n_embd"] *= 2
  path.write_text(json.dumps(config))
  proc = _run("experiments.rl_finetune", f"--workdir={model_copy.parent / 'rl'}",
              *_tiny_rl(str(model_copy)))
  _one_error_line(proc, 2, str(model_copy), "does not match its config")


def test_config_of_no_model(model_copy):
  path = model_copy / "config" / "metadata"
  config = json.loads(path.read_text())
  config["model"]["n_experts"] = 4
  path.write_text(json.dumps(config))
  proc = _run("experiments.prioritized_kl", f"--workdir={model_copy.parent / 'rl'}",
              *_tiny_rl(str(model_copy)))
  _one_error_line(proc, 2, str(model_copy), "describes no critical_kl model")


def test_resume_from_a_damaged_latest_checkpoint(tmp_path):
  for workdir in ("a", "b"):  # checkpoints at steps 4 and 6 (two are kept)
    assert _run("experiments.pretrain", f"--workdir={tmp_path / workdir}", *TINY_PRETRAIN,
                "--config.num_steps=6").returncode == 0
  _damage(_largest_file(tmp_path / "b" / "checkpoints" / "6" / "state"), "overwritten")
  proc = _run("experiments.pretrain", f"--workdir={tmp_path / 'b'}", *TINY_PRETRAIN,
              "--config.num_steps=6")
  _one_error_line(proc, 2, "checkpoints/6 is damaged", "--resume_previous", "from step 4")
  proc = _run("experiments.pretrain", f"--workdir={tmp_path / 'b'}", *TINY_PRETRAIN,
              "--config.num_steps=6", "--resume_previous")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from step 4" in proc.stdout and "resumed from step 4" in proc.stdout
  straight, _, _ = checkpoints.load_model(str(tmp_path / "a"))
  resumed, _, _ = checkpoints.load_model(str(tmp_path / "b"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, straight, resumed)


# ------------------------------------------------------------------------------------------------
# Killed with SIGKILL, resumed.


def _kill_at_random_point(cmd: list[str], checkpoint_dir: str, rng: random.Random) -> None:
  """Starts `cmd`, waits for its first checkpoint, then kills it at a random moment."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 900
  while not (os.path.isdir(checkpoint_dir) and any(d.isdigit() for d in os.listdir(checkpoint_dir))):
    assert proc.poll() is None and time.time() < deadline, "no checkpoint before the end"
    time.sleep(0.05)
  time.sleep(rng.uniform(0.0, 0.5))
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()


@pytest.mark.parametrize("seed", [0])
def test_killed_runs_resume_to_the_uninterrupted_result(tiny_model, tmp_path, seed):
  rng = random.Random(seed)
  # Pre-training.
  pre = [sys.executable, "-m", "experiments.pretrain", *TINY_PRETRAIN, "--config.num_steps=60"]
  assert subprocess.run(pre + [f"--workdir={tmp_path / 'pa'}"], cwd=ROOT, env=_env(),
                        capture_output=True, timeout=900).returncode == 0
  _kill_at_random_point(pre + [f"--workdir={tmp_path / 'pb'}"], str(tmp_path / "pb" / "checkpoints"),
                        rng)
  assert subprocess.run(pre + [f"--workdir={tmp_path / 'pb'}"], cwd=ROOT, env=_env(),
                        capture_output=True, timeout=900).returncode == 0
  straight, _, _ = checkpoints.load_model(str(tmp_path / "pa"))
  resumed, _, _ = checkpoints.load_model(str(tmp_path / "pb"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, straight, resumed)
  # RL fine-tuning: the same final parameters and the same metrics.jsonl.
  rl = [sys.executable, "-m", "experiments.rl_finetune", *_tiny_rl(tiny_model),
        "--config.num_iterations=10"]
  assert subprocess.run(rl + [f"--workdir={tmp_path / 'ra'}"], cwd=ROOT, env=_env(),
                        capture_output=True, timeout=900).returncode == 0
  _kill_at_random_point(rl + [f"--workdir={tmp_path / 'rb'}"], str(tmp_path / "rb" / "checkpoints"),
                        rng)
  proc = subprocess.run(rl + [f"--workdir={tmp_path / 'rb'}"], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "ra" / "metrics.jsonl").read_text() == \
      (tmp_path / "rb" / "metrics.jsonl").read_text()
  jax.tree_util.tree_map(np.testing.assert_array_equal, _latest_state(tmp_path / "ra"),
                         _latest_state(tmp_path / "rb"))


def test_evaluate_reports_progress(tiny_model):
  proc = _run("experiments.evaluate", f"--checkpoint={tiny_model}", "--digits=1,2",
              "--num_examples=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  progress = [line for line in proc.stdout.splitlines() if "ETA" in line]
  assert [line.split()[0] for line in progress] == ["1/4", "2/4", "3/4", "4/4"]
