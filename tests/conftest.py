"""Test-wide settings and helpers: a persistent XLA compilation cache, so identical programs compile
once; the tiny model; the tolerance of parameters compared after Adam updates; helpers that several
test modules share (test modules import this one, never each other)."""
import os

import jax
from jax.extend import core as jax_core
import numpy as np
import pytest

from critical_kl import checkpoints
from critical_kl import model as model_lib
from critical_kl.configs import pretrain_default
from critical_kl.configs import rl_default

jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def adam_atol(learning_rate: float, steps: int) -> float:
  """Absolute tolerance on parameters after `steps` Adam updates of two computations that agree
  up to float rounding (one device vs a mesh, vmapped vs alone, one CPU model vs another).

  Adam's update of a coordinate is lr·m̂/(√v̂ + ε): its sensitivity to the gradient g is up to
  lr/ε at g ≈ 0, so a near-zero gradient that differs in its last bits (≈ 1e-10, float32 sums of
  many terms) can move its parameter by ≈ 1e-2·lr per step, whatever the parameter's scale. A
  real error (a missing reduction, a wrong shard) changes gradients by their own size and moves
  most coordinates by ≈ lr, a hundred times more. The gradients themselves are compared with
  relative tolerances where a test has them.
  """
  return 1e-2 * learning_rate * steps


def np_log_softmax(logits, temperature):
  """log softmax(logits / temperature) over the last axis in float64 numpy, as a reference."""
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def loop_predicate_shapes(jaxpr) -> list[tuple]:
  """Shapes of the predicates of every while loop (a batched one makes XLA select the whole
  carry, KV cache included, at every step)."""
  shapes = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "while":
      shapes.append(eqn.params["cond_jaxpr"].jaxpr.outvars[0].aval.shape)
    for sub in jax_core.jaxprs_in_params(eqn.params):
      shapes += loop_predicate_shapes(sub)
  return shapes


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
  """A random 'pre-trained' model for N = 1 (RL on 2-digit problems), exported to a directory."""
  gpt = model_lib.GPTConfig(block_size=288, n_layer=1, n_head=2, n_embd=16, value_hidden=8)
  path = tmp_path_factory.mktemp("model") / "tiny"
  params = model_lib.init_params(gpt, jax.random.key(0))
  checkpoints.export(str(path), params, dict(model=dict(vars(gpt)), pretrain_max_digits=1))
  return str(path)


def tiny_rl_config(model_path, **overrides):
  """The default RL config shrunk to seconds, on the model at `model_path` (e.g. `tiny_model`)."""
  c = rl_default.get_config()
  c.checkpoint = model_path
  c.update(num_iterations=2, episodes_per_collect=4, num_minibatches=2, eval_episodes=4,
           critical_eval_problems=4, matched_problems=4, checkpoint_every=1, learning_rate=1e-3,
           temperature=2.0)
  c.update(overrides)
  return c


def tiny_pretrain_config(**overrides):
  """The default pre-training config shrunk to a 1-layer, 16-wide GPT on 1..2 digits, 6 steps."""
  c = pretrain_default.get_config()
  c.pretrain_max_digits = 2
  c.model.update(n_layer=1, n_head=2, n_embd=16, value_hidden=8)
  c.batch_size = 4
  c.num_steps = 6
  c.warmup_steps = 2
  c.log_every = 3
  c.checkpoint_every = 3
  c.update(overrides)
  return c
