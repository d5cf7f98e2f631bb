"""Test-wide settings: a persistent XLA compilation cache, so identical programs compile once."""
import os

import jax
import pytest

from critical_kl import checkpoints
from critical_kl import model as model_lib

jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
  """A random 'pre-trained' model for N = 1 (RL on 2-digit problems), exported to a directory."""
  gpt = model_lib.GPTConfig(block_size=288, n_layer=1, n_head=2, n_embd=16, value_hidden=8)
  path = tmp_path_factory.mktemp("model") / "tiny"
  params = model_lib.init_params(gpt, jax.random.key(0))
  checkpoints.export(str(path), params, dict(model=dict(vars(gpt)), pretrain_max_digits=1))
  return str(path)
