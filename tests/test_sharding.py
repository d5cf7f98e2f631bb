"""Sharding: one pre-train step and one RL iteration on 8 devices equal those on one device.

The 8 devices are simulated CPU devices, which XLA creates only when XLA_FLAGS is set before jax
starts; so this file runs itself once in a subprocess (`python tests/test_sharding.py OUT MODEL`),
which saves the results on every mesh, and the tests compare them.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from critical_kl import arms
from critical_kl import checkpoints
from critical_kl import pretrain
from critical_kl import pretrain_config
from critical_kl import rl
from critical_kl import rl_config as rl_config_lib
from critical_kl import sharding
from critical_kl import task as task_lib
from critical_kl.configs import pretrain_default
from critical_kl.configs import rl_default
from conftest import adam_atol  # tests/ is on sys.path under pytest

MESHES = {"8x1": (8, 1), "4x2": (4, 2)}
# Unoptimized CPU code generation halves the compile time; every side of a comparison uses it.
WORKER_XLA_FLAGS = ("--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
                    "--xla_llvm_disable_expensive_passes=true")


def _pretrain_config(**overrides):
  c = pretrain_default.get_config()
  c.pretrain_max_digits = 2
  c.model.update(n_layer=1, n_head=2, n_embd=32, value_hidden=8)
  c.update(batch_size=8, warmup_steps=0)  # no warm-up: the first step has a non-zero rate
  c.update(overrides)
  return c


def _pretrain_step(state, mesh):
  """One pre-train step, on one device when `mesh` is None; returns dict(loss, grads, params),
  the gradients those of the loss before the optimizer, computed on the same placement."""
  c = pretrain_config.PretrainConfig.from_config_dict(_pretrain_config())
  gpt, optimizer = c.model, pretrain.make_optimizer(c)
  batch = pretrain.make_batch(c, 0)
  if mesh is not None:
    state = sharding.place_state(state, mesh)
    batch = sharding.global_batch(mesh, batch, c.batch_size)
  step = pretrain.make_train_step(gpt, optimizer, state, mesh)
  grads = jax.jit(jax.grad(pretrain.completion_loss), static_argnums=1)(state["params"], gpt,
                                                                         *batch)
  state, loss = step(state, *batch)
  return dict(loss=loss, grads=grads, params=state["params"])


def _rl_iteration(state, ref_params, gpt, task, config, mesh):
  """One RL iteration, on one device when `mesh` is None; returns dict(params, metrics)."""
  batch = task_lib.collect_batch(task, config.episodes_per_collect, config.seed, 0, 0)
  arm = jax.tree_util.tree_map(lambda x: x[0], arms.run_arms(list(arms.parse("standard", 0.0))))
  if mesh is not None:
    state, ref_params = sharding.place_state((state, ref_params), mesh)
  iteration = rl.jit_iteration(gpt, config, task, state, mesh)
  state, metrics = iteration(state, arm, batch, ref_params)
  return dict(params=state.params, metrics=metrics)


def _indivisible_batch_error(mesh) -> str:
  c = pretrain_config.PretrainConfig.from_config_dict(_pretrain_config(batch_size=10))
  gpt, optimizer = c.model, pretrain.make_optimizer(c)
  state = jax.eval_shape(lambda: pretrain.init_state(c, optimizer))
  step = pretrain.make_train_step(gpt, optimizer, state, mesh)
  try:
    step(state, *pretrain.make_batch(c, 0))
  except ValueError as e:
    return str(e)
  return "no error"


def _worker(out_dir: str, model_path: str) -> None:
  """Runs both phases on one device and on every mesh; writes results.npz and info.json.

  results.npz holds the leaves of {phase: {"initial" | "single" | mesh: results}}, keyed by path.
  """
  assert jax.device_count() == 8, jax.devices()
  c = pretrain_config.PretrainConfig.from_config_dict(_pretrain_config())
  optimizer = pretrain.make_optimizer(c)
  # One compiled initialization instead of a compile per eager operation.
  pre_state = jax.jit(lambda: pretrain.init_state(c, optimizer))()
  rl_config = rl_default.get_config()
  rl_config.update(episodes_per_collect=8, num_minibatches=2, learning_rate=1e-3, temperature=2.0)
  rl_config = rl_config_lib.RLConfig.from_config_dict(rl_config)
  ref_params, gpt, pre_config = checkpoints.load_model(model_path)
  task = task_lib.make_task(pre_config["pretrain_max_digits"], rl_config.extra_digits)
  rl_state = rl.init_state(ref_params, rl_config, jax.random.key(0))

  results = dict(pretrain=dict(initial=dict(params=pre_state["params"])),
                 rl=dict(initial=dict(params=ref_params)))
  meshes = {"single": None, **{k: sharding.make_mesh(*v) for k, v in MESHES.items()}}
  for name, mesh in meshes.items():
    results["pretrain"][name] = _pretrain_step(pre_state, mesh)
    results["rl"][name] = _rl_iteration(rl_state, ref_params, gpt, task, rl_config, mesh)
  specs = {name: str(results["pretrain"][name]["params"]["h_0"]["c_fc"]["kernel"].sharding.spec)
           for name in MESHES}
  leaves = jax.tree_util.tree_leaves_with_path(results)
  np.savez(os.path.join(out_dir, "results.npz"),
           **{jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves})
  with open(os.path.join(out_dir, "info.json"), "w") as f:
    json.dump(dict(kernel_specs=specs, error=_indivisible_batch_error(meshes["8x1"])), f)


@pytest.fixture(scope="module")
def eight_devices(tiny_model, tmp_path_factory):
  """(arrays, info) written by the worker on 8 simulated CPU devices."""
  out = tmp_path_factory.mktemp("sharding")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " " + WORKER_XLA_FLAGS,
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "")
  proc = subprocess.run([sys.executable, __file__, str(out), tiny_model], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(out / "info.json") as f:
    return dict(np.load(out / "results.npz")), json.load(f)


def _case(arrays: dict, phase: str, name: str) -> dict[str, np.ndarray]:
  """The leaves of results[phase][name], keyed by their path below it."""
  prefix = f"['{phase}']['{name}']"
  return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


# Both phases run at learning rate 1e-3: pre-training one Adam step, RL one iteration of 2
# minibatches (2 steps).
ADAM_STEPS = {"pretrain": 1, "rl": 2}


def _tolerance(phase: str, name: str) -> dict:
  """Parameters after Adam: `adam_atol`. Gradients before the optimizer are well conditioned:
  relative to the largest gradient of their leaf (float32 reductions in another order). Losses
  and metrics: relative."""
  if name.startswith("['params']"):
    return dict(rtol=1e-5, atol=adam_atol(1e-3, ADAM_STEPS[phase]))
  return dict(rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("phase", ["pretrain", "rl"])
def test_sharded_equals_single_device(eight_devices, phase, mesh):
  arrays, _ = eight_devices
  single, sharded = _case(arrays, phase, "single"), _case(arrays, phase, mesh)
  assert single.keys() == sharded.keys() and len(single) > 10
  for name in single:
    tolerance = _tolerance(phase, name)
    if name.startswith("['grads']"):
      tolerance["atol"] = 1e-5 * float(np.abs(single[name]).max())
    np.testing.assert_allclose(sharded[name], single[name], err_msg=name, **tolerance)


def test_gradients_are_compared(eight_devices):
  """Guards the comparison above: pre-training gradients are there and not all zero."""
  arrays, _ = eight_devices
  grads = {k: v for k, v in _case(arrays, "pretrain", "single").items() if k.startswith("['grads']")}
  assert len(grads) > 10 and max(np.abs(v).max() for v in grads.values()) > 1e-3


@pytest.mark.parametrize("phase", ["pretrain", "rl"])
def test_one_step_moves_the_parameters(eight_devices, phase):
  """Guards the comparison above: the parameters after one step are not the initial ones."""
  arrays, _ = eight_devices
  initial, moved = _case(arrays, phase, "initial"), _case(arrays, phase, "single")
  assert max(np.abs(moved[k] - v).max() for k, v in initial.items()) > 1e-4


def test_params_axis_shards_large_parameters(eight_devices):
  _, info = eight_devices
  # c_fc kernel [32, 128]: its larger dimension is split over the 2 "params" devices.
  assert info["kernel_specs"]["4x2"] == str(jax.sharding.PartitionSpec(None, "params"))
  assert info["kernel_specs"]["8x1"] == str(jax.sharding.PartitionSpec())


def test_indivisible_batch_raises(eight_devices):
  _, info = eight_devices
  assert info["error"] == "batch size 10 is not divisible by the 8 devices of the data axis"


def test_mesh_must_use_every_device():
  one = jax.devices()[:1]
  assert sharding.make_mesh(devices=one).shape == {"data": 1, "params": 1}
  with pytest.raises(ValueError, match="does not match the 1 available devices"):
    sharding.make_mesh(data=2, devices=one)
  with pytest.raises(ValueError, match="does not match"):
    sharding.make_mesh(params=2, devices=one)


def test_config_selects_the_mesh():
  c = pretrain_default.get_config()
  shape = lambda: pretrain_config.PretrainConfig.from_config_dict(c).mesh_shape
  assert shape() == (1, 1) and sharding.mesh_from_shape(*shape()) is None
  c.sharding = dict(data=0, params=1)
  assert shape() == (0, 1)
  assert sharding.mesh_from_shape(*shape()).shape == {"data": jax.device_count(), "params": 1}


if __name__ == "__main__":
  _worker(*sys.argv[1:])
