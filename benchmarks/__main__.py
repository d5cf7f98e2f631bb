"""Every benchmark in one run: pre-training and generation, the RL iteration, optionally scale-out.

  python -m benchmarks                  # every model, several minutes on 2 CPU cores
  python -m benchmarks --models=default --rl_models=rl_small --reps=5 --json=/tmp/b.json
  python -m benchmarks --models= --rl_models=rl_small   # the RL part of one model only

  # Scale-out only: pre-training tokens/s of the default model at batch 8, 16, 32 on 1, 2, 4, 8
  # devices, and the memory per device of the 85M pre-train step and RL iteration (about ten
  # minutes on 2 CPU cores, most of it compiling the 85M programs):
  python -m benchmarks --models= --rl_models= --scaling --json=/tmp/scaling.json
  # The same with the RL iteration of rl_small (8 episodes) timed on every mesh as well:
  python -m benchmarks --models= --rl_models= --scaling --scaling_rl_model=rl_small
  # Hybrid meshes only (K/2 data × 2 params, e.g. 4 × 2 on 8 devices), no memory figures:
  python -m benchmarks --models= --rl_models= --scaling --mesh_params=2 --memory_model=

The parts: `benchmarks.pretrain` (the pre-training step against the matmul peak) with
`benchmarks.generation` (greedy generation with the KV cache against full recomputation) for each
of --models; `benchmarks.rl` (one RL iteration, and the same iteration in eager PyTorch when torch
is installed) for each of --rl_models; with --scaling, `benchmarks.scaling`. The run prints
tables, then all figures as one JSON line: device, cpu_count, matmul_peak_gflops_per_s, models
(per model), rl and notes (as `python -m benchmarks.rl` prints them), and scaling.
"""
import functools

from absl import flags

from benchmarks import common
from benchmarks import pretrain
from benchmarks import rl
from benchmarks import scaling
from experiments import _cli

_MODELS = flags.DEFINE_list("models", list(pretrain.MODELS),
                            f"Models to measure, from {list(pretrain.MODELS)}.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Pre-training batch (default: 32 for default, 8 for paper85m).")
_GEN_BATCH = flags.DEFINE_integer("gen_batch", 8, "Prompts generated side by side.")
_GEN_TOKENS = flags.DEFINE_integer("gen_tokens", 300, "Tokens generated per prompt.")
_RECOMPUTE_TOKENS = flags.DEFINE_integer(
    "recompute_tokens", None,
    "Tokens per prompt timed with full recomputation, out of --gen_tokens; every one costs a "
    "forward pass over the same full buffer, so fewer give the same rate sooner. 0 skips it "
    "(default: 100 for default, 2 for paper85m).")
_REPS = flags.DEFINE_integer(
    "reps", None, "Timed calls per measurement after the warm-up (RL: after compiling); the best "
    "counts (default: 3 for default, 1 for paper85m; 1 for RL).")
_RL_MODELS = flags.DEFINE_list(
    "rl_models", ["rl_small", "paper85m"],
    f"Models whose RL iteration is measured, from {list(rl.RL_MODELS)}; empty skips RL.")
_RL_BATCH = flags.DEFINE_integer(
    "rl_batch", None, "Episodes per RL iteration (default: 64, 4 for paper85m).")
_PEER = flags.DEFINE_bool("peer", True, "Also run the RL iteration in eager PyTorch when torch "
                          "is installed.")
_PEER_THREADS = flags.DEFINE_integer(
    "peer_threads", None, "torch's intra-op threads (default: torch's, one per core).")
_JSON = flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
_SCALING = flags.DEFINE_bool(
    "scaling", False, "Also measure the scale-out section: pre-training (and with "
    "--scaling_rl_model, RL) tokens/s against --batch_sizes and --device_counts, and the compiled "
    "memory per device of --memory_model; each device count runs in a subprocess.")
_SCALING_MODEL = flags.DEFINE_enum(
    "scaling_model", "default", list(pretrain.MODELS),
    "Model of the scale-out pre-training throughput.")
_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", ["8", "16", "32"], "Global pre-training batches of the scale-out section.")
_DEVICE_COUNTS = flags.DEFINE_list(
    "device_counts", ["1", "2", "4", "8"],
    "Device counts of the scale-out section: simulated CPU devices on a CPU, else the first K "
    "devices (counts above those available are skipped).")
_MESH_PARAMS = flags.DEFINE_list(
    "mesh_params", ["1", "all"],
    "Sizes of the mesh's \"params\" (FSDP) axis in the scale-out section; on K devices each size p "
    "that divides K gives a (K/p data) × (p params) mesh; \"all\" means p = K.")
_SCALING_RL_MODEL = flags.DEFINE_string(
    "scaling_rl_model", "", f"Model, from {list(rl.RL_MODELS)}, whose RL iteration the scale-out "
    "section also times at --scaling_rl_batch episodes; empty skips it.")
_SCALING_RL_BATCH = flags.DEFINE_integer(
    "scaling_rl_batch", 8, "Episodes per RL iteration in the scale-out section.")
_MEMORY_MODEL = flags.DEFINE_string(
    "memory_model", "paper85m", f"Model, from {list(pretrain.MODELS)}, whose pre-train step and "
    "RL iteration the scale-out section compiles for their memory per device; empty skips it.")
_MEMORY_BATCH = flags.DEFINE_integer(
    "memory_batch", 8, "Pre-training batch and RL episodes of the memory figures.")


def _setting(flag, preset: dict, key: str):
  """The flag's value, or the model preset's `key` when the flag is unset."""
  return preset[key] if flag.value is None else flag.value


def _positive_ints(flag) -> list[int]:
  """The values of a list flag as integers >= 1; ValueError otherwise."""
  if not flag.value or not all(v.isdigit() and int(v) >= 1 for v in flag.value):
    raise ValueError(f"--{flag.name} takes integers >= 1, got {','.join(flag.value)!r}")
  return [int(v) for v in flag.value]


def _validate_flags():
  for flag, known in ((_MODELS, pretrain.MODELS), (_RL_MODELS, rl.RL_MODELS)):
    unknown = set(flag.value) - set(known)
    if unknown:
      raise ValueError(f"unknown --{flag.name} {sorted(unknown)}; choose from {list(known)}")
  for flag in (_BATCH_SIZE, _GEN_BATCH, _GEN_TOKENS, _REPS, _RL_BATCH, _PEER_THREADS):
    if flag.value is not None and flag.value < 1:
      raise ValueError(f"--{flag.name} must be >= 1, got {flag.value}")
  if _RECOMPUTE_TOKENS.value is not None and _RECOMPUTE_TOKENS.value < 0:
    raise ValueError(f"--recompute_tokens must be >= 0, got {_RECOMPUTE_TOKENS.value}")
  if not _SCALING.value:
    return
  for flag, known in ((_SCALING_RL_MODEL, rl.RL_MODELS), (_MEMORY_MODEL, pretrain.MODELS)):
    if flag.value and flag.value not in known:
      raise ValueError(f"unknown --{flag.name} {flag.value!r}; choose from {list(known)} or ''")
  for flag in (_BATCH_SIZES, _DEVICE_COUNTS):
    _positive_ints(flag)
  for size in _MESH_PARAMS.value:
    if size != "all" and not (size.isdigit() and int(size) >= 1):
      raise ValueError(f"--mesh_params takes integers >= 1 or 'all', got {size!r}")
  for flag in (_SCALING_RL_BATCH, _MEMORY_BATCH):
    if flag.value < 1:
      raise ValueError(f"--{flag.name} must be >= 1, got {flag.value}")


def _scaling_figures() -> dict:
  preset = pretrain.MODELS[_SCALING_MODEL.value]
  rl_model = memory_model = None
  if _SCALING_RL_MODEL.value:
    rl_model = (_SCALING_RL_MODEL.value, rl.RL_MODELS[_SCALING_RL_MODEL.value]["model"])
  if _MEMORY_MODEL.value:
    memory_model = (_MEMORY_MODEL.value, pretrain.MODELS[_MEMORY_MODEL.value]["model"])
  print("scale-out section:", flush=True)
  return scaling.measure_scaling(
      model=(_SCALING_MODEL.value, preset["model"]), batch_sizes=_positive_ints(_BATCH_SIZES),
      device_counts=_positive_ints(_DEVICE_COUNTS), params_sizes=_MESH_PARAMS.value,
      reps=_setting(_REPS, preset, "reps"), rl_model=rl_model,
      rl_episodes=_SCALING_RL_BATCH.value, memory_model=memory_model,
      memory_batch=_MEMORY_BATCH.value, log=functools.partial(print, flush=True))


def _model_figures(peak: float) -> dict[str, dict]:
  results = {}
  for name in _MODELS.value:
    preset = pretrain.MODELS[name]
    print(f"{name}:", flush=True)
    recompute = min(_setting(_RECOMPUTE_TOKENS, preset, "recompute_tokens"),
                    _GEN_TOKENS.value)
    config = common.task_config(preset["model"], _setting(_BATCH_SIZE, preset, "batch_size"))
    results[name] = pretrain.benchmark_model(
        config, peak_gflops=peak, gen_batch=_GEN_BATCH.value, gen_tokens=_GEN_TOKENS.value,
        recompute_tokens=recompute, reps=_setting(_REPS, preset, "reps"),
        log=functools.partial(print, flush=True))
  return results


def main(_):
  _validate_flags()
  # Before anything here touches a device: on GPUs and TPUs the workers need the devices' memory,
  # which this process would otherwise claim.
  scaling_figures = _scaling_figures() if _SCALING.value else None
  figures = common.device_figures()
  print(f"device: {figures['device']}, {figures['cpu_count']} CPU cores", flush=True)
  peak = common.measure_matmul_peak()
  results = _model_figures(peak)
  rl_results, notes = rl.benchmark_models(
      _RL_MODELS.value, peak_gflops=peak, batch=_RL_BATCH.value, reps=_REPS.value,
      peer=_PEER.value, peer_threads=_PEER_THREADS.value,
      log=functools.partial(print, flush=True))
  print(pretrain.format_report(peak, results))
  if rl_results:
    print("\n" + rl.format_rl_report(rl_results))
  figures.update(matmul_peak_gflops_per_s=peak, models=results, rl=rl_results, notes=notes)
  if scaling_figures is not None:
    print("\n" + scaling.format_scaling_report(scaling_figures))
    figures["scaling"] = scaling_figures
  common.write_json(figures, _JSON.value)


if __name__ == "__main__":
  _cli.run(main)
