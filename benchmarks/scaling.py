"""Scale-out: throughput against batch size and device count, and memory per device.

For each device count K and each mesh of K devices (one per "params" size p that divides K: K/p
devices split the batch along "data", p split the parameters and optimizer state along "params",
FSDP; see critical_kl/sharding.py):
  * the pre-training step of a model at each global batch, and optionally one RL iteration:
    tokens/s, tokens/s per device, and the efficiency, tokens/s per device over the 1-device rate
    at the same batch;
  * the memory per device of the pre-train step and the RL iteration of a model, from XLA's
    memory_analysis() of the compiled program (arguments, outputs, temporaries, generated code),
    without running it; the compile times are reported too. On GPUs and TPUs each program is then
    also run once in its own process for the devices' measured peak
    (memory_stats()["peak_bytes_in_use"]); CPU devices keep no such statistics.
Each device count runs in its own Python process (`benchmarks.scaling_worker`). On a CPU its
devices are simulated (XLA_FLAGS --xla_force_host_platform_device_count=K) and share the same
cores, so the figures show that the sharded programs run and what sharding costs, not a speed-up;
on GPUs and TPUs the process takes the first K real devices, and counts above the number available
are skipped with a note.
"""
import json
import os
import re
import subprocess
import sys
import time

from benchmarks import common
from benchmarks import scaling_worker

_MIB = 2**20


def mesh_shapes(devices: int, params_sizes) -> list[tuple[int, int]]:
  """The (data, params) shapes of the meshes over `devices` devices.

  Args:
    devices: the number of devices K.
    params_sizes: sizes p of the "params" axis, ints or "all" (p = K); those that do not divide K
      are left out.

  Returns:
    [(K // p, p)] in the order of `params_sizes`, without repeats.
  """
  shapes = []
  for size in params_sizes:
    params = devices if size == "all" else int(size)
    if devices % params == 0 and (devices // params, params) not in shapes:
      shapes.append((devices // params, params))
  return shapes


def _run_worker(spec: dict, extra_xla_flags: str = "") -> dict:
  """`scaling_worker.measure(spec)` in a fresh interpreter, whose CPU platform has spec["devices"]
  simulated devices (GPUs and TPUs are left as they are).

  Its progress lines go to this process's stderr.

  Raises:
    RuntimeError: when the worker fails.
  """
  env = dict(os.environ)
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = " ".join(
      f for f in (xla_flags.strip(),
                  f"--xla_force_host_platform_device_count={spec['devices']}", extra_xla_flags)
      if f)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (common.REPO_ROOT, env.get("PYTHONPATH")) if p)
  proc = subprocess.run([sys.executable, "-m", "benchmarks.scaling_worker", json.dumps(spec)],
                        cwd=common.REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True,
                        check=False)
  prefix = scaling_worker.RESULT_PREFIX
  results = [line for line in proc.stdout.splitlines() if line.startswith(prefix)]
  if proc.returncode or not results:
    raise RuntimeError(f"the scale-out worker on {spec['devices']} devices failed with exit status "
                       f"{proc.returncode} (its error is above)")
  return json.loads(results[-1][len(prefix):])


def add_efficiency(rows: list[dict]) -> None:
  """Adds tokens/s per device, and its ratio to the 1-device rate at the same batch (None without
  a 1-device row): 1 is perfect strong scaling."""
  single = {row["batch"]: row["tokens_per_s"] for row in rows if row["devices"] == 1}
  for row in rows:
    row["tokens_per_s_per_device"] = row["tokens_per_s"] / row["devices"]
    base = single.get(row["batch"])
    row["efficiency"] = row["tokens_per_s_per_device"] / base if base else None


def measure_scaling(*, model: tuple[str, dict], batch_sizes, device_counts, params_sizes,
                    reps: int, rl_model: tuple[str, dict] | None = None, rl_episodes: int = 8,
                    memory_model: tuple[str, dict] | None = None, memory_batch: int = 8,
                    extra_xla_flags: str = "", log=print) -> dict:
  """The scale-out figures: one worker process per device count, then (on GPUs and TPUs only) one
  per memory row that runs its program for the measured peak.

  Args:
    model: (name, architecture fields) of the pre-training throughput.
    batch_sizes: global pre-training batches.
    device_counts: numbers of devices K.
    params_sizes: sizes of the "params" axis (ints or "all"), as in `mesh_shapes`.
    reps: timed calls per measurement.
    rl_model: (name, fields) whose RL iteration of `rl_episodes` episodes is also timed, or None.
    memory_model: (name, fields) whose `scaling_worker.PROGRAMS` are compiled at `memory_batch`
      for their memory per device, or None.
    extra_xla_flags: appended to every worker's XLA_FLAGS.
    log: progress lines.

  Returns:
    A JSON-ready dict: platform, device_kind, simulated (CPU devices), cpu_count, the settings,
    parameters, rows pretrain and rl (devices, data, params, batch, step_s, tokens_per_s,
    tokens_per_s_per_device, efficiency), rows memory (devices, data, params, program, batch,
    state_bytes and `scaling_worker.compiled_memory`'s figures, measured_peak_bytes) and notes.
  """
  figures = dict(platform=None, device_kind=None, cpu_count=os.cpu_count(), model=model[0],
                 batch_sizes=list(batch_sizes), device_counts=list(device_counts),
                 params_sizes=list(params_sizes), reps=reps,
                 rl_model=rl_model and rl_model[0], rl_episodes=rl_episodes,
                 memory_model=memory_model and memory_model[0], memory_batch=memory_batch,
                 parameters={}, pretrain=[], rl=[], memory=[], notes=[])
  for count in device_counts:
    meshes = mesh_shapes(count, params_sizes)
    log(f"  {count} devices: " + ", ".join(f"{d}×{p}" for d, p in meshes) + " (data × params)")
    spec = dict(kind="sweep", devices=count, meshes=meshes, reps=reps,
                pretrain=dict(model=model[1], batches=list(batch_sizes)),
                rl=rl_model and dict(model=rl_model[1], episodes=rl_episodes),
                memory=memory_model and dict(model=memory_model[1], batch=memory_batch))
    start = time.perf_counter()
    out = _run_worker(spec, extra_xla_flags)
    figures["platform"], figures["device_kind"] = out["platform"], out["device_kind"]
    if "skipped" in out:
      figures["notes"].append(out["skipped"])
      continue
    log(f"  {count} devices done in {time.perf_counter() - start:.0f} s")
    figures["parameters"].update(out["parameters"])
    for key in ("pretrain", "rl", "memory", "notes"):
      figures[key] += out[key]
  figures["simulated"] = figures["platform"] == "cpu"
  for row in figures["memory"]:
    row["measured_peak_bytes"] = None
    if figures["simulated"]:
      continue  # CPU devices keep no memory statistics
    log(f"  running the {row['program']} program for its peak memory, {row['data']}×"
        f"{row['params']} mesh")
    spec = dict(kind="peak", devices=row["devices"], mesh=[row["data"], row["params"]],
                program=row["program"], model=memory_model[1], batch=memory_batch)
    row["measured_peak_bytes"] = _run_worker(spec, extra_xla_flags)["peak_bytes"]
  add_efficiency(figures["pretrain"])
  add_efficiency(figures["rl"])
  return figures


def _long_table(columns, rows: list[dict]) -> list[str]:
  """One line per row; `columns` holds (header, format) pairs, right-aligned."""
  widths = [max(len(header), 9) + 2 for header, _ in columns]
  lines = ["".join(f"{header:>{w}}" for (header, _), w in zip(columns, widths))]
  def cell(fmt, row):
    try:
      return fmt.format(**row)
    except TypeError:  # None: not measured on this platform, or no 1-device row
      return "-"
  for row in rows:
    lines.append("".join(f"{cell(fmt, row):>{w}}" for (_, fmt), w in zip(columns, widths)))
  return lines


def _mib(value) -> float | None:
  return None if value is None else value / _MIB


_THROUGHPUT_COLUMNS = (
    ("devices", "{devices}"),
    ("data×params", "{data}×{params}"),
    ("batch", "{batch}"),
    ("step s", "{step_s:.3f}"),
    ("tokens/s", "{tokens_per_s:,.0f}"),
    ("per device", "{tokens_per_s_per_device:,.0f}"),
    ("efficiency", "{efficiency:.0%}"),
)

_MEMORY_COLUMNS = (
    ("program", "{program}"),
    ("devices", "{devices}"),
    ("data×params", "{data}×{params}"),
    ("state MiB", "{state:,.0f}"),
    ("arguments", "{argument:,.0f}"),
    ("outputs", "{output:,.0f}"),
    ("temps", "{temp:,.0f}"),
    ("total", "{total:,.0f}"),
    ("XLA peak", "{xla_peak:,.0f}"),
    ("measured peak", "{measured_peak:,.0f}"),
    ("compile s", "{compile_s:.1f}"),
)


def format_scaling_report(figures: dict) -> str:
  """The scale-out figures as tables: throughput per mesh and batch, then memory per device."""
  if figures["simulated"]:
    lines = [f"scale-out on simulated CPU devices: XLA host devices sharing this machine's "
             f"{figures['cpu_count']} CPU cores,",
             "so the figures show that sharding works and what it costs, not a speed-up."]
  else:
    lines = [f"scale-out on {figures['platform']} devices ({figures['device_kind']})."]
  lines += ["mesh data×params: the batch is split over data, parameters and optimizer state over "
            "params (FSDP);",
            "efficiency: tokens/s per device over the 1-device rate at the same global batch."]
  parameters = figures["parameters"]
  if figures["pretrain"]:
    lines += ["", f"pre-training step of {figures['model']} ({parameters.get('pretrain', 0):,} "
                  f"parameters), best of {figures['reps']}:"]
    lines += _long_table(_THROUGHPUT_COLUMNS, figures["pretrain"])
  if figures["rl"]:
    lines += ["", f"RL iteration of {figures['rl_model']} ({parameters.get('rl', 0):,} "
                  f"parameters, {figures['rl_episodes']} episodes, tokens generated), best of "
                  f"{figures['reps']}:"]
    lines += _long_table(_THROUGHPUT_COLUMNS, figures["rl"])
  if figures["memory"]:
    measured = ("the devices' peak_bytes_in_use after one run" if not figures["simulated"]
                else "none, CPU devices keep no statistics")
    lines += ["", f"memory per device in MiB of {figures['memory_model']} "
                  f"({parameters.get('memory', 0):,} parameters) at batch "
                  f"{figures['memory_batch']}, from XLA's memory_analysis() of the compiled "
                  f"programs (not run):",
              "state: parameters and optimizer state; total: arguments + outputs - aliased + "
              "temps + generated code;",
              "XLA peak: XLA's peak_memory_in_bytes" + (
                  " (on CPU it leaves out the temps)" if figures["simulated"] else "") +
              f"; measured peak: {measured}."]
    rows = [dict(row, **{key: _mib(row[f"{key}_bytes"]) for key in
                         ("state", "argument", "output", "temp", "total", "xla_peak",
                          "measured_peak")})
            for row in figures["memory"]]
    lines += _long_table(_MEMORY_COLUMNS, rows)
  lines += [f"note: {note}" for note in figures["notes"]]
  return "\n".join(lines)
