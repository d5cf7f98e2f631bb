"""The scale-out measurements on the first K devices, in a process of their own (`scaling`).

  python -m benchmarks.scaling_worker SPEC   # SPEC: the JSON of `measure`'s argument

XLA creates simulated CPU devices only when XLA_FLAGS holds --xla_force_host_platform_device_count
before jax starts, so each device count runs here in a fresh interpreter. On GPUs and TPUs the same
worker takes the first K real devices; a fresh process there also gives every executed memory
measurement its own device-memory peak, which jax cannot reset. The result is printed as one line
that starts with RESULT_PREFIX; progress lines go to stderr.
"""
import functools
import json
import math
import sys
import time

import jax
import numpy as np

from critical_kl import model as model_lib
from critical_kl import pretrain
from critical_kl import pretrain_config
from critical_kl import rl as rl_lib
from critical_kl import sharding
from critical_kl import task as task_lib
from benchmarks import common
from benchmarks import rl

RESULT_PREFIX = "scaling-result: "
PROGRAMS = ("pretrain", "rl")


def _abstract(tree, shardings):
  """`jax.ShapeDtypeStruct`s of `tree`'s leaves with `shardings` (a matching tree, or one sharding
  for every leaf): enough to lower and compile a program without allocating its arguments."""
  def leaf(x, s):
    return jax.ShapeDtypeStruct(x.shape, jax.dtypes.canonicalize_dtype(x.dtype), sharding=s)
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree_util.tree_map(lambda x: leaf(x, shardings), tree)
  return jax.tree_util.tree_map(leaf, tree, shardings)


def _bytes_per_device(tree) -> int:
  """Bytes that one device holds of `tree`, whose leaves carry NamedShardings (the largest shard,
  which every device holds when shapes divide evenly)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(tree))


def _init_on_mesh(init, mesh):
  """`init()` computed straight into the shardings of `sharding.param_sharding` on `mesh`: unlike
  `sharding.place_state(init())`, no device ever holds a whole copy, which would count in its
  peak memory."""
  return jax.jit(init, out_shardings=sharding.param_sharding(jax.eval_shape(init), mesh))()


def _pretrain_program(model_fields: dict, batch_size: int, mesh, concrete: bool):
  """The sharded pre-training step of task_config(model_fields, batch_size) on `mesh`.

  Returns:
    (jitted step, its arguments (state, tokens [B, L], positions [B, L], loss_mask [B, L]), B * L).
    With `concrete` False the arguments are `jax.ShapeDtypeStruct`s, enough to compile.
  """
  config = pretrain_config.PretrainConfig.from_config_dict(
      common.task_config(model_fields, batch_size))
  gpt = config.model
  optimizer = pretrain.make_optimizer(config)
  batch = tuple(pretrain.make_batch(config, 0))
  init = lambda: pretrain.init_state(config, optimizer)
  if concrete:
    state = _init_on_mesh(init, mesh)
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  else:
    state = jax.eval_shape(init)
    state = _abstract(state, sharding.param_sharding(state, mesh))
    batch = _abstract(batch, sharding.batch_sharding(mesh))
  step = pretrain.make_train_step(gpt, optimizer, state, mesh)
  # Jitted once more so that it can be lowered ahead of time; the shardings of the inner jit stay.
  return jax.jit(step), (state, *batch), math.prod(batch[0].shape)


def _rl_program(model_fields: dict, episodes: int, mesh, concrete: bool):
  """The sharded RL iteration (one run, as in `rl.measure_rl`) of `episodes` episodes on `mesh`.

  Returns:
    (jitted iteration, its arguments (state, arm, batch, ref_params)).
    With `concrete` False the arguments are `jax.ShapeDtypeStruct`s, enough to compile.
  """
  gpt, config, task = rl.rl_setup(model_fields, episodes)
  batch = task_lib.collect_batch(task, config.episodes_per_collect, config.seed, run_seed=0,
                                 iteration=0)
  arm = jax.tree_util.tree_map(lambda x: x[0], rl.first_arm(config)[0])
  episode_sharding = sharding.batch_sharding(mesh)

  def init():  # the run's state and the reference parameters, as in rl.benchmark_rl
    key = jax.random.key(config.seed)
    params = common.never_pad(model_lib.init_params(gpt, key))
    return rl_lib.init_state(params, config, key), params

  if concrete:
    state, ref_params = _init_on_mesh(init, mesh)
    batch = jax.device_put(batch, episode_sharding)
    arm = jax.device_put(arm, sharding.replicated(mesh))
  else:
    state, ref_params = (_abstract(t, sharding.param_sharding(t, mesh))
                         for t in jax.eval_shape(init))
    batch = _abstract(batch, episode_sharding)
    arm = _abstract(arm, sharding.replicated(mesh))
  iteration = rl_lib.jit_iteration(gpt, config, task, state, mesh)
  return jax.jit(iteration), (state, arm, batch, ref_params)


def _program(name: str, model_fields: dict, batch: int, mesh, concrete: bool):
  """(jitted program, arguments) of the program `name`, one of PROGRAMS, on `mesh`."""
  if name == "pretrain":
    return _pretrain_program(model_fields, batch, mesh, concrete)[:2]
  return _rl_program(model_fields, batch, mesh, concrete)


def compiled_memory(jitted, args: tuple) -> dict:
  """Per-device memory of `jitted(*args)` from XLA's `memory_analysis()`, compiled but not run.

  Returns:
    Bytes per device of the arguments, outputs, outputs aliasing arguments, temporaries and
    generated code; their total (arguments + outputs - aliased + temporaries + code); XLA's own
    peak estimate (None where the backend gives none); and the lowering and compile times in s.
  """
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  lowered_at = time.perf_counter()
  stats = lowered.compile().memory_analysis()
  figures = dict(lower_s=lowered_at - start, compile_s=time.perf_counter() - lowered_at)
  fields = dict(argument_bytes="argument_size_in_bytes", output_bytes="output_size_in_bytes",
                alias_bytes="alias_size_in_bytes", temp_bytes="temp_size_in_bytes",
                code_bytes="generated_code_size_in_bytes", xla_peak_bytes="peak_memory_in_bytes")
  for key, attr in fields.items():
    figures[key] = getattr(stats, attr, None) if stats is not None else None
  parts = [figures[k] for k in ("argument_bytes", "output_bytes", "temp_bytes", "code_bytes")]
  figures["total_bytes"] = (None if None in parts or figures["alias_bytes"] is None
                            else sum(parts) - figures["alias_bytes"])
  return figures


def _device_peak(devices) -> int | None:
  """The largest peak_bytes_in_use of `devices` since this process started; None where the
  backend keeps no statistics (CPU)."""
  stats = [device.memory_stats() for device in devices]
  if any(s is None or "peak_bytes_in_use" not in s for s in stats):
    return None
  return max(s["peak_bytes_in_use"] for s in stats)


def measure(spec: dict) -> dict:
  """The scale-out measurements on the first spec["devices"] devices, for
  `scaling.measure_scaling`.

  Args:
    spec: the devices K and reps, and
      * kind "sweep": meshes ([data, params] pairs over K devices); pretrain (dict(model=fields,
        batches=[B])); rl (dict(model=fields, episodes=B), or None); memory (dict(model=fields,
        batch=B), or None): the throughput rows and the compiled memory of both PROGRAMS;
      * kind "peak": mesh, program, model, batch: runs the program once and reads the devices'
        peak memory.

  Returns:
    platform, device_kind, available (devices), and "skipped" (a note) when K exceeds them; else
    for "sweep" rows pretrain, rl and memory, notes and parameters (per part), for "peak"
    peak_bytes (None without device statistics).
  """
  available = jax.devices()
  figures = dict(platform=available[0].platform, device_kind=available[0].device_kind,
                 available=len(available))
  count = spec["devices"]
  if count > len(available):
    return dict(figures, skipped=f"{count} devices skipped: {len(available)} available")
  devices = available[:count]
  log = functools.partial(print, file=sys.stderr, flush=True)
  if spec["kind"] == "peak":
    mesh = sharding.make_mesh(*spec["mesh"], devices=devices)
    jitted, args = _program(spec["program"], spec["model"], spec["batch"], mesh, concrete=True)
    jax.block_until_ready(jitted(*args))
    return dict(figures, peak_bytes=_device_peak(devices))
  figures.update(pretrain=[], rl=[], memory=[], notes=[], parameters={})
  for data, params in spec["meshes"]:
    mesh = sharding.make_mesh(data, params, devices=devices)
    where = dict(devices=count, data=data, params=params)
    for batch in spec["pretrain"]["batches"]:
      if batch % data:
        figures["notes"].append(f"pre-train batch {batch} skipped on {data}×{params}: the data "
                                f"axis does not divide it")
        continue
      log(f"    pre-train step, {data}×{params} mesh, batch {batch}")
      step, args, tokens = _pretrain_program(spec["pretrain"]["model"], batch, mesh, True)
      seconds, _ = common.timeit(lambda: step(*args), spec["reps"])
      figures["parameters"]["pretrain"] = model_lib.num_params(args[0]["params"])
      figures["pretrain"].append(dict(where, batch=batch, step_s=seconds,
                                      tokens_per_s=tokens / seconds))
    if spec["rl"]:
      episodes = spec["rl"]["episodes"]
      if episodes % data:
        figures["notes"].append(f"RL batch {episodes} skipped on {data}×{params}: the data axis "
                                f"does not divide it")
      else:
        log(f"    RL iteration, {data}×{params} mesh, {episodes} episodes")
        iteration, args = _rl_program(spec["rl"]["model"], episodes, mesh, True)
        seconds, (_, metrics) = common.time_compiled(iteration, args, spec["reps"])
        # Counted as in rl.measure_rl: the tokens actually generated.
        generated = float(metrics["episode_length"]) * episodes
        figures["parameters"]["rl"] = model_lib.num_params(args[0].params)
        figures["rl"].append(dict(where, batch=episodes, step_s=seconds,
                                  tokens_per_s=generated / seconds))
    if spec["memory"]:
      batch = spec["memory"]["batch"]
      if batch % data:
        figures["notes"].append(f"memory at batch {batch} skipped on {data}×{params}: the data "
                                f"axis does not divide it")
        continue
      for program in PROGRAMS:
        log(f"    compiling the {program} program for its memory, {data}×{params} mesh")
        jitted, args = _program(program, spec["memory"]["model"], batch, mesh, concrete=False)
        figures["parameters"]["memory"] = model_lib.num_params(args[-1] if program == "rl"
                                                               else args[0]["params"])
        figures["memory"].append(dict(where, program=program, batch=batch,
                                      state_bytes=_bytes_per_device(args[0]),
                                      **compiled_memory(jitted, args)))
  return figures


if __name__ == "__main__":
  print(RESULT_PREFIX + json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
