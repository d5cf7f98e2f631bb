"""The paper-scale configs: they load (with the `:N` argument), validate and build the 85M model.

No training: the model is built with `jax.eval_shape`, which allocates nothing.
"""
import json
import os
import subprocess
import sys

from absl import flags
import jax
from ml_collections import config_flags
import pytest

from critical_kl import model as model_lib
from critical_kl import pretrain
from critical_kl import pretrain_config
from critical_kl import rl_config
from critical_kl import task as task_lib
from critical_kl.configs import paper_pretrain
from experiments import _cli
from experiments import beta_ablation


def load(name: str, arg: str | None = None):
  """The config as the experiments' `--config=FILE[:ARG]` flag loads it."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  path = _cli.config_path(name) + (f":{arg}" if arg is not None else "")
  values(["prog", f"--config={path}"])
  return values.config


def shapes(gpt: model_lib.GPTConfig):
  return jax.eval_shape(lambda: model_lib.init_params(gpt, jax.random.key(0)))


@pytest.mark.parametrize("n", paper_pretrain.PAPER_DIGITS)
def test_pretrain_config_builds_the_85m_model(n):
  config = load("paper_pretrain", str(n))
  assert config.pretrain_max_digits == n
  gpt = pretrain_config.PretrainConfig.from_config_dict(config).model
  assert (gpt.n_layer, gpt.n_head, gpt.n_embd) == (12, 12, 768)
  params = shapes(gpt)
  blocks = sum(model_lib.num_params(params[f"h_{i}"]) for i in range(12))
  # SPEC §3: 85M parameters, i.e. the twelve transformer blocks (12·(12d² + 13d) = 85.05M);
  # the position embeddings add block_size·d, 0.8M (N = 7) to 1.4M (N = 13).
  assert 84.5e6 < blocks < 85.5e6
  assert 85.5e6 < model_lib.num_params(params) < 87.0e6
  # The context holds an N + 3-digit rollout, longer than the training sequences.
  assert gpt.block_size >= task_lib.make_task(n, 3).prompt_length + task_lib.make_task(n, 3).max_new_tokens


def test_pretrain_config_argument_is_checked():
  assert paper_pretrain.get_config().pretrain_max_digits == 7
  for bad in ("seven", "0"):
    with pytest.raises(ValueError, match="N"):
      paper_pretrain.get_config(bad)


def _check_rl(config, n: int, extra: int):
  rl_config.RLConfig.from_config_dict(config)
  assert config.checkpoint == paper_pretrain.model_dir(n)
  assert config.extra_digits == extra
  gpt = pretrain.model_config(paper_pretrain.get_config(str(n)))
  task = task_lib.make_task(n, extra)
  assert task.prompt_length + task.max_new_tokens <= gpt.block_size  # finetune's own check
  assert (config.temperature, config.certainty_temperature) == (2.0, 4.0)  # τ, τ_c [paper/orig]
  assert config.episodes_per_collect == 50 and config.eval_episodes == 100


def test_prioritized_kl_config():
  config = load("paper_prioritized_kl")
  _check_rl(config, 7, 1)
  assert (config.kl_coef, config.beta, config.num_seeds) == (5.0, 150.0, 10)
  assert config.arms == "standard,prioritized,matched,oracle,no_kl" and config.estimator == "k2"


def test_powered_config_is_sized_to_resolve_5_points():
  """The mechanism issue's floor: ≥ 10 seeds, ≥ 400 test problems, ≥ 1,000 episodes per run."""
  config = load("prioritized_kl_full")
  assert config.num_seeds >= 10 and config.eval_episodes >= 400
  assert config.num_iterations * config.episodes_per_collect >= 1000
  names = config.arms.split(",")
  assert names[:2] == ["standard", "prioritized"] and "matched" in names
  assert config.episodes_per_collect % config.num_minibatches == 0
  assert config.eval_episodes % config.eval_chunk == 0


def test_beta_ablation_config():
  config = load("paper_beta_ablation")
  _check_rl(config, 7, 1)
  assert config.num_seeds == 9 and config.kl_coef == 5.0
  assert tuple(config.betas) == (10, 50, 100, 150, 200, 300, 500, 1000, 10000)
  assert beta_ablation.arms_of(config.betas).split(",")[0] == "prioritized+beta=10"


@pytest.mark.parametrize("n", paper_pretrain.PAPER_DIGITS)
def test_pretraining_levels_config(n):
  config = load("paper_pretraining_levels", str(n))
  _check_rl(config, n, 2)
  assert config.kl_coef == 10.0 and config.arms == "standard"  # α = 10, standard KL


def test_arms_of_refuses_bad_lists():
  assert beta_ablation.arms_of(["0", "150"]) == "prioritized+beta=0,prioritized+beta=150"
  for bad in ([], [1.0, 1.0], [-1.0], ["x"]):
    with pytest.raises(ValueError, match="betas"):
      beta_ablation.arms_of(bad)


def test_beta_ablation_runs_and_ends_with_json(tiny_model, tmp_path):
  cmd = [sys.executable, "-m", "experiments.beta_ablation", f"--workdir={tmp_path}",
         "--betas=0,150", f"--config.checkpoint={tiny_model}", "--config.num_seeds=1",
         "--config.num_iterations=1", "--config.episodes_per_collect=2",
         "--config.num_minibatches=1", "--config.eval_episodes=2",
         "--config.critical_eval_problems=2", "--config.matched_problems=2",
         "--config.temperature=2.0"]
  # The persistent compilation cache of conftest.py, for the subprocess too.
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert list(result["arms"]) == ["prioritized+beta=0", "prioritized+beta=150"]
  assert os.path.getsize(result["plot"]) > 1000
  assert "prioritized+beta=150" in proc.stdout.splitlines()[-2]
