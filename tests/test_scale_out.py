"""The experiments on a device mesh and over several processes equal their one-device runs.

The 8 devices are simulated CPU devices, which XLA creates only when XLA_FLAGS is set before jax
starts; so this file runs itself in subprocesses: `python tests/test_scale_out.py mesh OUT MODEL`
trains on one device and on meshes of 8 devices and saves the results, and `... process OUT I PORT`
is process I of 2 local processes (4 devices each) that pre-train together on one 8-device mesh.
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from critical_kl import arms
from critical_kl import distributed
from critical_kl import finetune
from critical_kl import pretrain
from critical_kl import pretrain_config
from critical_kl import rl
from critical_kl import rl_config as rl_config_lib
from critical_kl import runs
from critical_kl import runs_evaluation
from critical_kl import sharding
from critical_kl import task as task_lib
from critical_kl.configs import pretrain_default
from critical_kl.configs import rl_default
from conftest import adam_atol  # tests/ is on sys.path under pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Unoptimized CPU code generation halves the compile time; every side of a comparison uses it.
XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
ARMS = "standard,prioritized"


def _pretrain_config(**overrides):
  c = pretrain_default.get_config()
  c.pretrain_max_digits = 2
  c.model.update(n_layer=1, n_head=2, n_embd=32, value_hidden=8)
  c.update(batch_size=8, warmup_steps=0, num_steps=3, log_every=1, checkpoint_every=2)
  c.update(overrides)
  return c


def _rl_config(model_path, **overrides):
  c = rl_default.get_config()
  c.checkpoint = model_path
  c.update(num_seeds=2, num_iterations=2, episodes_per_collect=8, num_minibatches=2,
           eval_episodes=4, critical_eval_problems=4, matched_problems=4, checkpoint_every=1,
           learning_rate=1e-3, temperature=2.0, arms=ARMS)
  c.update(overrides)
  return c


def _env(devices: int) -> dict:
  # After the caller's own XLA_FLAGS, e.g. the code-generation variations of BUILD.md.
  flags = (f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices} "
           f"{XLA_FLAGS}")
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
              JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "")


def _save(path: str, tree) -> None:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  np.savez(path, **{jax.tree_util.keystr(k): np.asarray(x) for k, x in leaves})


def _runs_iteration(model_path: str, num_runs: int, mesh) -> dict:
  """One vmapped iteration of `num_runs` runs, unsharded when `mesh` is None."""
  config = rl_config_lib.RLConfig.from_config_dict(_rl_config(model_path))
  ref_params, gpt, pre_config = finetune.checkpoints.load_model(model_path)
  task = task_lib.make_task(pre_config["pretrain_max_digits"], config.extra_digits)
  state = runs.stack([rl.init_state(ref_params, config, jax.random.key(i))
                      for i in range(num_runs)])
  batches = runs.stack([task_lib.collect_batch(task, config.episodes_per_collect, config.seed, i, 0)
                        for i in range(num_runs)])
  run_arms = arms.run_arms(list(arms.parse(
      ",".join(f"prioritized+beta={b:g}" for b in np.linspace(0.0, 150.0, num_runs)), 0.0)))
  if mesh is not None:
    state = sharding.place_runs(state, mesh, config.episodes_per_collect)
    ref_params = sharding.place_state(ref_params, mesh)
  iteration = runs.make_runs_iteration(gpt, config, task, state, mesh)
  state, metrics = iteration(state, run_arms, batches, ref_params)
  return dict(params=state.params, metrics=metrics)


class _ParameterSums:
  """Stands in for `runs_evaluation.Evaluator`, whose rollouts would dominate the compile time: the sum
  of every run's parameters, under the names the host loop reads."""

  def __init__(self, *_):
    self.sums = jax.jit(jax.vmap(lambda p: sum(x.sum() for x in jax.tree_util.tree_leaves(p))))

  def __call__(self, params, *_, **__) -> dict[str, list[float]]:
    sums = np.asarray(self.sums(params)).tolist()
    return dict(accuracy=sums, sampled_accuracy=sums)


def _mesh_worker(out: str, model_path: str) -> None:
  """Pre-training, RL fine-tuning and bare RL iterations, on one device and on meshes of 8."""
  assert jax.device_count() == 8, jax.devices()
  runs_evaluation.Evaluator = _ParameterSums
  results, info = {}, {}
  for name, mesh in (("single", (1, 1)), ("4x2", (4, 2))):
    c = _pretrain_config(num_steps=4)
    c.sharding.update(data=mesh[0], params=mesh[1])
    results[f"pretrain_{name}"] = pretrain.train(c, os.path.join(out, f"pre_{name}"),
                                                 log=lambda _: None)["params"]
    c = _rl_config(model_path)
    c.sharding.update(data=mesh[0], params=mesh[1])
    ft = finetune.finetune(c, os.path.join(out, f"rl_{name}"), log=lambda _: None)
    results[f"finetune_{name}"] = dict(params=ft.params, after=ft.after,
                                       success=[r["success"] for r in ft.history[-1]["runs"]])
  info["finetune_spec"] = str(results["finetune_4x2"]["params"]["h_0"]["c_fc"]["kernel"]
                              .sharding.spec)
  # Two runs do not divide over 8 devices: the 8 episodes of each run are split instead.
  results["runs_single"] = _runs_iteration(model_path, 2, None)
  results["runs_8x1"] = _runs_iteration(model_path, 2, sharding.make_mesh(8, 1))
  info["runs_8x1_axis"] = sharding.runs_split(2, 8, sharding.make_mesh(8, 1))
  try:
    sharding.runs_split(3, 12, sharding.make_mesh(8, 1))
    info["runs_error"] = "no error"
  except ValueError as e:
    info["runs_error"] = str(e)
  _save(os.path.join(out, "results.npz"), results)
  with open(os.path.join(out, "info.json"), "w") as f:
    json.dump(info, f)


def _process_worker(out: str, model_path: str, index: str, port: str) -> None:
  """Process `index` of 2: pre-trains on the 8 devices of both, then again from step 2; then
  fine-tunes 4 RL runs on them."""
  distributed.initialize(f"localhost:{port}", 2, int(index))
  assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
  c = _pretrain_config(num_steps=4)
  c.sharding.data = 0
  workdir, logs = os.path.join(out, "workdir"), []
  pretrain.train(c, workdir, log=logs.append)
  # A run killed after step 2: drop the final checkpoint, start again.
  if distributed.is_main():
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  distributed.sync("dropped the last checkpoint")
  state = pretrain.train(c, workdir, log=logs.append)
  params = distributed.host_local(state["params"])
  mesh = sharding.mesh_from_shape(c.sharding.data, c.sharding.params)
  rows = sharding.process_rows(c.batch_size, mesh).tolist()
  _save(os.path.join(out, f"params_{index}.npz"), params)
  runs_evaluation.Evaluator = _ParameterSums
  c = _rl_config(model_path)
  c.sharding.data = 0
  ft = finetune.finetune(c, os.path.join(out, "rl"), log=logs.append)
  _save(os.path.join(out, f"rl_params_{index}.npz"), distributed.host_local(ft.params))
  with open(os.path.join(out, f"info_{index}.json"), "w") as f:
    json.dump(dict(rows=rows, logs=logs), f)


def _run_worker(*args, devices: int = 8, module: str | None = None):
  """Starts this file (or `python -m module`) with `devices` simulated CPU devices."""
  command = ["-m", module] if module else [__file__]
  return subprocess.Popen([sys.executable, *command, *map(str, args)], env=_env(devices),
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout: int = 600) -> None:
  _, stderr = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, stderr[-4000:]


@pytest.fixture(scope="module")
def mesh_results(tiny_model, tmp_path_factory):
  """(arrays, info) written by the mesh worker on 8 simulated CPU devices."""
  out = tmp_path_factory.mktemp("scale_out")
  _finish(_run_worker("mesh", out, tiny_model))
  with open(out / "info.json") as f:
    return dict(np.load(out / "results.npz")), json.load(f)


def _case(arrays: dict, name: str) -> dict[str, np.ndarray]:
  prefix = f"['{name}']"
  return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


# Adam steps behind each compared result, all at learning rate 1e-3: pre-training runs 4 steps; RL
# runs 2 iterations of 2 minibatches, a bare runs iteration 1.
PRETRAIN_STEPS, FINETUNE_STEPS, ITERATION_STEPS = 4, 4, 2


def _assert_close(a: dict, b: dict, adam_steps: int) -> None:
  assert a.keys() == b.keys() and len(a) > 10
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=adam_atol(1e-3, adam_steps),
                               err_msg=name)


def test_pretrain_on_a_mesh_equals_one_device(mesh_results):
  arrays, _ = mesh_results
  _assert_close(_case(arrays, "pretrain_4x2"), _case(arrays, "pretrain_single"), PRETRAIN_STEPS)


def test_finetune_on_a_mesh_equals_one_device(mesh_results):
  arrays, info = mesh_results
  _assert_close(_case(arrays, "finetune_4x2"), _case(arrays, "finetune_single"), FINETUNE_STEPS)
  # 4 runs over 4 "data" devices; the stacked c_fc kernel [R, 16, 64] is split along "params".
  assert info["finetune_spec"] == str(jax.sharding.PartitionSpec("data", None, "params"))


def test_runs_iteration_split_over_episodes_equals_unsharded(mesh_results):
  arrays, info = mesh_results
  assert info["runs_8x1_axis"] == 1
  _assert_close(_case(arrays, "runs_8x1"), _case(arrays, "runs_single"), ITERATION_STEPS)


def test_indivisible_runs_and_episodes_raise(mesh_results):
  _, info = mesh_results
  assert info["runs_error"] == ("neither the 3 runs nor the 12 episodes per collect are divisible "
                                "by the 8 devices of the data axis")


def test_cli_indivisible_batch_is_one_error_line(tmp_path):
  proc = _run_worker("--config.sharding.data=0", "--config.batch_size=12",
                     f"--workdir={tmp_path}", module="experiments.pretrain")
  _, stderr = proc.communicate(timeout=900)
  assert proc.returncode == 2
  assert stderr.strip().splitlines() == [
      "error: batch size 12 is not divisible by the 8 devices of the data axis"]
  assert not os.path.exists(tmp_path / "checkpoints")  # raised before touching the workdir


def test_process_slices_concatenate_to_the_global_batch():
  """What each process encodes: its rows of the one global batch, whatever the process count."""
  c = pretrain_config.PretrainConfig.from_config_dict(_pretrain_config(batch_size=12))
  whole = pretrain.make_batch(c, 7)
  for parts in (2, 3, 4):
    slices = [pretrain.make_batch(c, 7, rows) for rows in np.array_split(np.arange(12), parts)]
    for full, pieces in zip(whole, zip(*slices)):
      np.testing.assert_array_equal(np.concatenate(pieces), full)
  # Rows need not be contiguous (devices of one process may hold scattered shards).
  rows = np.array([1, 5, 6, 11])
  for full, part in zip(whole, pretrain.make_batch(c, 7, rows)):
    np.testing.assert_array_equal(part, full[rows])


def test_one_process_holds_every_row():
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  np.testing.assert_array_equal(sharding.process_rows(8, mesh), np.arange(8))
  assert distributed.is_main()
  tree = dict(a=np.ones(3), b=jax.numpy.zeros(2))
  local = distributed.host_local(tree)
  assert local["a"] is tree["a"] and local["b"] is tree["b"]


def test_default_configs_stay_on_one_device():
  pre = pretrain_config.PretrainConfig.from_config_dict(pretrain_default.get_config())
  rl_typed = rl_config_lib.RLConfig.from_config_dict(rl_default.get_config())
  assert pre.mesh_shape == rl_typed.mesh_shape == (1, 1)
  assert sharding.mesh_from_shape(*pre.mesh_shape) is None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_device(mesh_results, tiny_model, tmp_path):
  """Two local processes with 4 devices each pre-train on one 8-device mesh, checkpoint, resume,
  and fine-tune."""
  arrays, _ = mesh_results
  port = _free_port()
  procs = [_run_worker("process", tmp_path, tiny_model, i, port, devices=4) for i in range(2)]
  for proc in procs:
    _finish(proc, timeout=900)
  infos = []
  for i in range(2):
    with open(tmp_path / f"info_{i}.json") as f:
      infos.append(json.load(f))
  # Each process encodes its half of the batch; only process 0 logs.
  assert infos[0]["rows"] == [0, 1, 2, 3] and infos[1]["rows"] == [4, 5, 6, 7]
  assert any("resumed from step 2" in line for line in infos[0]["logs"]) and not infos[1]["logs"]
  # The RL runs' metrics are written once, by process 0.
  with open(tmp_path / "rl" / "metrics.jsonl") as f:
    assert [json.loads(line)["iteration"] for line in f] == [1, 2]
  single = _case(arrays, "pretrain_single")
  rl_single = {k[len("['params']"):]: v for k, v in _case(arrays, "finetune_single").items()
               if k.startswith("['params']")}
  for i in range(2):
    _assert_close(dict(np.load(tmp_path / f"params_{i}.npz")), single, PRETRAIN_STEPS)
    _assert_close(dict(np.load(tmp_path / f"rl_params_{i}.npz")), rl_single, FINETUNE_STEPS)


if __name__ == "__main__":
  workers = dict(mesh=_mesh_worker, process=_process_worker)
  workers[sys.argv[1]](*sys.argv[2:])
