"""One RL iteration per model: ours, jitted, and the same iteration in eager PyTorch, side by side.

  python -m benchmarks.rl                          # rl_small and paper85m, several minutes
  python -m benchmarks.rl --models=rl_small --reps=3 --json=/tmp/rl.json
  python -m benchmarks.rl --smoke                  # tiny sizes: checks that everything runs

For each of --models it measures one iteration of the default RL config (R = 1 run, random weights
that never sample the padding token, 4-digit problems, 389-token episodes, one update over all the
episodes): rollout, update and whole-iteration tokens/s, counting the tokens generated (and trained
on), and the iteration's FLOP/s as a fraction of the dense float32 matmul peak measured in the same
run. When torch and transformers are installed (`pip install -e '.[peer]'`) it then runs the same
iteration in plain eager PyTorch (`benchmarks.peer_torch`) on the same weights, problems and sizes,
and reports its tokens/s and the ratio; otherwise it prints a note and leaves them out. The
authors' implementation is a reference figure measured once (AUTHORS_TOKENS_PER_S).

The run prints a table, then all figures as one JSON line: device, cpu_count,
matmul_peak_gflops_per_s, notes, and rl: {model: {tokens_per_s, peer_tokens_per_s, ratio
(tokens_per_s / peer_tokens_per_s), peak_fraction, ...}}, the peer's figures None when skipped.
"""
import functools
import importlib.util

from absl import flags
import jax
import jax.numpy as jnp

from critical_kl import arms
from critical_kl import model as model_lib
from critical_kl import pretrain
from critical_kl import rl as rl_lib
from critical_kl import rl_config as rl_config_lib
from critical_kl import runs as runs_lib
from critical_kl import sampling
from critical_kl import task as task_lib
from critical_kl.configs import rl_default
from benchmarks import common
from experiments import _cli

# The 4-layer, 128-wide GPT (0.91M parameters) of the authors' reference figure.
RL_SMALL = dict(n_layer=4, n_head=4, n_embd=128)

# Per-model architecture, and the defaults of --batch and --reps. 64 episodes, but only 4 for the
# 85M model, whose rollout of them alone takes about 40 s on 2 CPU cores; every part is timed once.
RL_MODELS = {
    "default": dict(model={}, batch=64, reps=1),
    "rl_small": dict(model=RL_SMALL, batch=64, reps=1),
    "paper85m": dict(model=model_lib.PAPER_85M, batch=4, reps=1),
}

# --smoke: every model replaced by a 1-layer, 16-wide GPT on 2 episodes of 2-digit problems
# (257-token episodes), and a small matmul for the peak.
SMOKE = dict(model=dict(n_layer=1, n_head=2, n_embd=16, value_hidden=8), batch=2, reps=1,
             max_digits=1)
SMOKE_MATMUL = 256

# Generated-and-trained tokens/s of a whole RL iteration of the authors' PyTorch/Tianshou
# implementation, measured once on a 2-core machine like ours (random weights, 4-digit prompts,
# 389-token episodes).
AUTHORS_TOKENS_PER_S = {"rl_small": 12.0, "paper85m": 0.3}

# The project's targets on a 2-core CPU: ours over the eager PyTorch peer, and over the matmul peak.
TARGET_RATIO = {"rl_small": 2.5, "paper85m": 1.5}
TARGET_PEAK_FRACTION = {"rl_small": 0.35}
TARGET_VS_AUTHORS = 500.0

PEER_INSTALL_NOTE = ("the eager PyTorch peer is skipped: torch or transformers is not installed "
                     "(pip install -e '.[peer]')")


def rl_setup(model_fields: dict, batch: int, max_digits: int | None = None):
  """The GPT, RL config and task of an RL measurement.

  Args:
    model_fields: the architecture, over the default pre-training config's.
    batch: episodes per iteration.
    max_digits: N of the pre-training task (default: the default config's, 3).

  Returns:
    (GPTConfig with the block size of that pre-training config, the default RL config collecting
    `batch` episodes, the RL task "N + 1": at N = 3, 4-digit problems and 389-token episodes).
  """
  pretrain_config = common.task_config(model_fields, batch)
  if max_digits is not None:
    pretrain_config.pretrain_max_digits = max_digits
  config = rl_default.get_config()
  config.episodes_per_collect = batch
  # One update step per iteration, like the eager PyTorch peer; the default config's five
  # minibatches do the same FLOPs in smaller matmuls.
  config.num_minibatches = 1
  task = task_lib.make_task(pretrain_config.pretrain_max_digits, config.extra_digits)
  return (pretrain.model_config(pretrain_config), rl_config_lib.RLConfig.from_config_dict(config),
          task)


def first_arm(config: rl_config_lib.RLConfig) -> tuple[arms.RunArms, float]:
  """The first arm of `config.arms` as the `arms.RunArms` of one run [1], and its β."""
  run = arms.run_arms(list(config.arms[:1]))
  return run, float(run.beta[0])


def measure_rl(params, gpt: model_lib.GPTConfig, config: rl_config_lib.RLConfig,
               task: task_lib.Task, batch: task_lib.Batch, reps: int) -> dict:
  """Times `sampling.rollout` alone and a whole `runs.make_runs_iteration` call (R = 1 run).

  The update time (reference pass, GAE, one pass of minibatch updates) is the difference: the
  iteration's own rollout differs from the one timed alone only by its key and the vmap over the
  single run, and since PAD is never sampled both generate the same number of tokens. Tokens are
  counted as actually generated (the iteration's mean episode length times its episodes).
  """
  key = jax.random.key(config.seed)
  rollout = jax.jit(lambda params, problems, key: sampling.rollout(
      params, gpt, problems, key, rules=task_lib.episode_rules(task.vocabulary),
      max_new_tokens=task.max_new_tokens,
      temperature=config.temperature, failure_reward=config.failure_reward))
  rollout_s, traj = common.time_compiled(rollout, (params, batch.problems, key), reps)
  args = (runs_lib.stack([rl_lib.init_state(params, config, key)]), first_arm(config)[0],
          runs_lib.stack([batch]), params)
  iteration = runs_lib.make_runs_iteration(gpt, config, task)
  iteration_s, (_, metrics) = common.time_compiled(iteration, args, reps)
  episodes = config.episodes_per_collect
  episode_length = float(metrics["episode_length"][0])
  generated = episode_length * episodes
  total = task.prompt_length + task.max_new_tokens
  # Forward FLOPs from model.flops_per_token with the whole buffer T as context, since both the
  # cached decode and the teacher-forced passes score every buffer position before masking: one
  # forward per generated token (the prompts' prefill left out), one forward over the T buffer
  # tokens of each episode for the reference pass, three (forward and backward) for the update.
  # As in the pre-training figures, the value head, elementwise work and the optimizer are left out.
  flops = model_lib.flops_per_token(gpt, total) * (generated + 4 * episodes * total)
  update_s = iteration_s - rollout_s
  return dict(parameters=model_lib.num_params(params), episodes=episodes,
              episode_length=episode_length, rollout_s=rollout_s, update_s=update_s,
              iteration_s=iteration_s,
              rollout_tokens_per_s=float(jnp.sum(traj.lengths)) / rollout_s,
              update_tokens_per_s=generated / update_s, tokens_per_s=generated / iteration_s,
              gflops_per_s=flops / iteration_s / 1e9)


def load_peer():
  """The module `benchmarks.peer_torch`, or None when torch or transformers is not installed."""
  if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers")):
    return None
  from benchmarks import peer_torch  # pylint: disable=import-outside-toplevel
  return peer_torch


def benchmark_rl(gpt: model_lib.GPTConfig, config: rl_config_lib.RLConfig, task: task_lib.Task,
                 *, peak_gflops: float, reps: int, peer=None, peer_threads: int | None = None,
                 authors: float | None = None, log=print) -> dict:
  """The RL figures of one model: ours, then the peer's on the same weights and problems.

  Args:
    gpt, config, task: as from `rl_setup`.
    peak_gflops: the matmul peak of this run.
    reps: timed calls of each part.
    peer: the module `benchmarks.peer_torch` (see `load_peer`), or None to skip it.
    peer_threads: torch's threads (default: torch's, one per core).
    authors: the authors' tokens/s at this size, or None.
    log: progress lines.

  Returns:
    `measure_rl`'s figures with peak_fraction, vs_authors (None without `authors`), peer (the
    peer's figures from `peer_torch.measure`), peer_tokens_per_s and ratio (None without `peer`).
  """
  params = common.never_pad(model_lib.init_params(gpt, jax.random.key(config.seed)))
  batch = task_lib.collect_batch(task, config.episodes_per_collect, config.seed, run_seed=0,
                                 iteration=0)
  beta = first_arm(config)[1]
  figures = measure_rl(params, gpt, config, task, batch, reps)
  figures["peak_fraction"] = figures["gflops_per_s"] / peak_gflops
  figures["vs_authors"] = figures["tokens_per_s"] / authors if authors else None
  figures.update(peer=None, peer_tokens_per_s=None, ratio=None)
  if peer is not None:
    log("  the same iteration in eager PyTorch")
    figures["peer"] = peer.measure(params, gpt, config, batch.problems, beta=beta,
                                   max_new_tokens=task.max_new_tokens, reps=reps,
                                   threads=peer_threads)
    figures["peer_tokens_per_s"] = figures["peer"]["tokens_per_s"]
    figures["ratio"] = figures["tokens_per_s"] / figures["peer_tokens_per_s"]
  return figures


def benchmark_models(names, *, peak_gflops: float, batch: int | None = None,
                     reps: int | None = None, peer: bool = True, peer_threads: int | None = None,
                     smoke: bool = False, log=print) -> tuple[dict[str, dict], list[str]]:
  """`benchmark_rl` of each of the RL_MODELS `names`; with `smoke` all at SMOKE sizes, without
  the authors' figures.

  Returns:
    (figures per model, notes on what was skipped).
  """
  unknown = set(names) - set(RL_MODELS)
  if unknown:
    raise ValueError(f"unknown RL models {sorted(unknown)}; choose from {list(RL_MODELS)}")
  peer_module = load_peer() if peer and names else None
  notes = [PEER_INSTALL_NOTE] if peer and names and peer_module is None else []
  for note in notes:
    log(f"note: {note}")
  results = {}
  for name in names:
    preset = SMOKE if smoke else RL_MODELS[name]
    gpt, config, task = rl_setup(preset["model"], batch or preset["batch"],
                                 preset.get("max_digits"))
    log(f"{name} RL iteration: {config.episodes_per_collect} episodes of {gpt}")
    results[name] = benchmark_rl(gpt, config, task, peak_gflops=peak_gflops,
                                 reps=reps or preset["reps"], peer=peer_module,
                                 peer_threads=peer_threads,
                                 authors=None if smoke else AUTHORS_TOKENS_PER_S.get(name),
                                 log=log)
  return results, notes


# Table rows of the RL figures.
_ROWS = (
    ("parameters", "{parameters:,}"),
    ("episodes × mean length", "{episodes} × {episode_length:.0f}"),
    ("rollout", "{rollout_s:.2f} s"),
    ("update", "{update_s:.2f} s"),
    ("whole iteration", "{iteration_s:.2f} s"),
    ("rollout tokens/s", "{rollout_tokens_per_s:,.1f}"),
    ("update tokens/s", "{update_tokens_per_s:,.1f}"),
    ("iteration tokens/s", "{tokens_per_s:,.1f}"),
    ("iteration GFLOP/s", "{gflops_per_s:.1f}"),
    ("  fraction of matmul peak", "{peak_fraction:.1%}"),
    ("eager PyTorch: generate", "{peer[generate_s]:.2f} s"),
    ("  update", "{peer[update_s]:.2f} s"),
    ("  whole iteration", "{peer[iteration_s]:.2f} s"),
    ("  iteration tokens/s", "{peer_tokens_per_s:,.1f}"),
    ("ours × eager PyTorch", "{ratio:.2f}×"),
    ("ours × authors' implementation", "{vs_authors:,.0f}×"),
)


def format_rl_report(results: dict[str, dict], targets: bool = True) -> str:
  """The RL figures as a table, one column per model, followed by the `targets`."""
  lines = ["RL iteration (random weights, PAD never sampled):"]
  lines += common.table(_ROWS, results)
  peers = [f["peer"] for f in results.values() if f["peer"]]
  if peers:
    lines.append(f"eager PyTorch: torch {peers[0]['torch']}, transformers "
                 f"{peers[0]['transformers']}, threads: {peers[0]['threads']}")
  if targets:
    lines += [""] + _target_lines(results)
  return "\n".join(lines)


def _target_lines(results: dict[str, dict]) -> list[str]:
  lines = []
  for name, f in results.items():
    if name in TARGET_PEAK_FRACTION:
      target = TARGET_PEAK_FRACTION[name]
      lines.append(f"target: {name} iteration ≥ {target:.0%} of the matmul peak: "
                   f"{f['peak_fraction']:.1%} ({common.met(f['peak_fraction'], target)})")
    if name in TARGET_RATIO and f["ratio"] is not None:
      target = TARGET_RATIO[name]
      lines.append(f"target: {name} iteration ≥ {target:g}× eager PyTorch in the same run: "
                   f"{f['ratio']:.2f}× ({common.met(f['ratio'], target)})")
    if f["vs_authors"] is not None:
      lines.append(f"target: {name} iteration ≥ {TARGET_VS_AUTHORS:.0f}× the authors' "
                   f"{AUTHORS_TOKENS_PER_S[name]:g} tokens/s: {f['vs_authors']:,.0f}× "
                   f"({common.met(f['vs_authors'], TARGET_VS_AUTHORS)})")
  return lines


def _define_flags() -> dict:
  return dict(
      models=flags.DEFINE_list("models", ["rl_small", "paper85m"],
                               f"Models whose RL iteration is measured, from {list(RL_MODELS)}."),
      batch=flags.DEFINE_integer("batch", None, "Episodes per iteration (default: 64, 4 for "
                                 "paper85m)."),
      reps=flags.DEFINE_integer("reps", None, "Timed iterations after compiling (ours) or a "
                                "short warm-up iteration (the peer); the best counts (default 1)."),
      peer=flags.DEFINE_bool("peer", True, "Also run the eager PyTorch peer when torch is "
                             "installed."),
      peer_threads=flags.DEFINE_integer(
          "peer_threads", None, "torch's intra-op threads (default: torch's, one per core)."),
      smoke=flags.DEFINE_bool("smoke", False, f"Tiny sizes instead of each model's ({SMOKE}), "
                              "to check that the benchmark runs; the figures mean nothing."),
      json=flags.DEFINE_string("json", None, "Also write the figures to this JSON file."))


def main(flag_holders: dict, argv):
  del argv
  values = {name: holder.value for name, holder in flag_holders.items()}
  for name in ("batch", "reps", "peer_threads"):
    if values[name] is not None and values[name] < 1:
      raise ValueError(f"--{name} must be >= 1, got {values[name]}")
  figures = common.device_figures()
  print(f"device: {figures['device']}, {figures['cpu_count']} CPU cores", flush=True)
  peak = common.measure_matmul_peak(SMOKE_MATMUL if values["smoke"] else 2048)
  results, notes = benchmark_models(
      values["models"], peak_gflops=peak, batch=values["batch"], reps=values["reps"],
      peer=values["peer"], peer_threads=values["peer_threads"], smoke=values["smoke"],
      log=functools.partial(print, flush=True))
  print(f"matmul peak (float32, jitted jnp.dot): {peak:.1f} GFLOP/s\n")
  print(format_rl_report(results, targets=not values["smoke"]))
  common.write_json(dict(figures, matmul_peak_gflops_per_s=peak, notes=notes, rl=results),
                    values["json"])


if __name__ == "__main__":
  _cli.run(functools.partial(main, _define_flags()))
