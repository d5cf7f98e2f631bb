"""Throughput of pre-training, generation and RL on this machine, against its own matmul peak.

  python -m experiments.benchmark                  # every model, about eight minutes on 2 CPU cores
  python -m experiments.benchmark --models=default --rl_models=rl_small --reps=5 --json=/tmp/b.json
  python -m experiments.benchmark --models= --rl_models=rl_small   # the RL part of one model only

  # Scale-out only: pre-training tokens/s of the default model at batch 8, 16, 32 on 1, 2, 4, 8
  # devices, and the memory per device of the 85M pre-train step and RL iteration (about ten
  # minutes on 2 CPU cores, most of it compiling the 85M programs):
  python -m experiments.benchmark --models= --rl_models= --scaling --json=/tmp/scaling.json
  # The same with the RL iteration of rl_small (8 episodes) timed on every mesh as well:
  python -m experiments.benchmark --models= --rl_models= --scaling --scaling_rl_model=rl_small
  # Hybrid meshes only (K/2 data × 2 params, e.g. 4 × 2 on 8 devices), no memory figures:
  python -m experiments.benchmark --models= --rl_models= --scaling --mesh_params=2 --memory_model=

For each model it measures
  * the pre-training step: tokens/s, and achieved FLOP/s as a fraction of the dense float32 matmul
    peak measured in the same run;
  * greedy generation of --gen_tokens tokens per prompt with the KV cache, and with full
    recomputation (a forward pass over the whole token buffer for every new token).
Both models see the task of the default config (1..3-digit addition, 242-token training sequences);
only the architecture differs. For each of --rl_models it measures one iteration of the default RL
config (R = 1 run, random weights, 4-digit problems, 389-token episodes): rollout, update and
whole-iteration tokens/s, the iteration's FLOP/s as a fraction of the matmul peak, and its tokens/s
against two reference implementations measured on a 2-core machine (see RL_REFERENCE).

With --scaling, the scale-out section measures, for each of --device_counts K and each mesh of K
devices (one per --mesh_params size p that divides K: K/p devices split the batch along "data", p
split the parameters and optimizer state along "params", FSDP; see critical_kl/sharding.py):
  * the pre-training step of --scaling_model at each of --batch_sizes (global batch), and with
    --scaling_rl_model one RL iteration of --scaling_rl_batch episodes: tokens/s, tokens/s per
    device, and the efficiency, tokens/s per device over the 1-device rate at the same batch;
  * the memory per device of the pre-train step and the RL iteration of --memory_model at
    --memory_batch, from XLA's memory_analysis() of the compiled program (arguments, outputs,
    temporaries, generated code), without running it; the compile times are reported too. On GPUs
    and TPUs each program is then also run once in its own process for the devices' measured peak
    (memory_stats()["peak_bytes_in_use"]); CPU devices keep no such statistics.
Each device count runs in its own Python process. On a CPU its devices are simulated (XLA_FLAGS
--xla_force_host_platform_device_count=K) and share the same cores, so the figures show that the
sharded programs run and what sharding costs, not a speed-up; on GPUs and TPUs the process takes
the first K real devices, and counts above the number available are skipped with a note.

Every time is the best of --reps calls after one warm-up call, which also compiles; the best rather
than the mean because other processes on the machine only ever add time. The RL calls are compiled
ahead of time instead of warmed up, which spares a whole extra iteration of the 85M model. The run
prints tables, then all figures as one JSON line.
"""
import functools
import json
import math
import os
import re
import subprocess
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from critical_kl import arithmetic
from critical_kl import arms
from critical_kl import model as model_lib
from critical_kl import pretrain
from critical_kl import rl
from critical_kl import sampling
from critical_kl import sharding
from critical_kl import tokenizer
from critical_kl.configs import pretrain_default
from critical_kl.configs import rl_default
from experiments import _cli

# Per-model architecture, and the defaults of --batch_size, --reps and --recompute_tokens, sized so
# that the whole run stays near five minutes on 2 CPU cores. Every recomputed token costs the same
# (a forward pass over the full buffer), so timing a few of them gives the rate at --gen_tokens;
# the 85M model needs several seconds per token there, so it times only two.
MODELS = {
    "default": dict(model={}, batch_size=32, reps=3, recompute_tokens=100),
    "paper85m": dict(model=model_lib.PAPER_85M, batch_size=8, reps=1, recompute_tokens=2),
}

# The project's targets on a CPU.
TARGET_PEAK_FRACTION = 0.4  # pre-training step of the 85M model
TARGET_SPEEDUP = 10.0  # cached over recomputed generation, at 300 generated tokens

# The 4-layer, 128-wide GPT (0.93M parameters) of the reference RL measurements below.
RL_SMALL = dict(n_layer=4, n_head=4, n_embd=128)

# Per-model architecture, and the defaults of --rl_batch and --reps for the RL iteration. 64
# episodes, as in the eager PyTorch reference, but only 4 for the 85M model, whose rollout of them
# alone takes about 40 s on 2 CPU cores; every part is timed once, which keeps the RL figures of
# rl_small and paper85m near three minutes.
RL_MODELS = {
    "default": dict(model={}, batch=64, reps=1),
    "rl_small": dict(model=RL_SMALL, batch=64, reps=1),
    "paper85m": dict(model=model_lib.PAPER_85M, batch=4, reps=1),
}

# Generated-and-trained tokens/s of a whole RL iteration on 2 CPU cores (random weights, 4-digit
# prompts, 389-token episodes), measured on a machine like ours for comparison: the authors'
# PyTorch/Tianshou implementation, and an eager PyTorch loop (Hugging Face generate() with its KV
# cache, then one forward and backward step with a frozen reference forward, batch 64).
RL_REFERENCE = {
    "rl_small": dict(authors=12.0, eager=2350.0),
    "paper85m": dict(authors=0.3, eager=65.0),
}
# The project's targets for a whole RL iteration at equal model size.
TARGET_VS_AUTHORS = 500.0
TARGET_VS_EAGER = 3.0
TARGET_RL_PEAK_FRACTION = 0.5

_MODELS = flags.DEFINE_list("models", list(MODELS), f"Models to measure, from {list(MODELS)}.")
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
    f"Models whose RL iteration is measured, from {list(RL_MODELS)}; empty skips RL.")
_RL_BATCH = flags.DEFINE_integer(
    "rl_batch", None, "Episodes per RL iteration (default: 64, 4 for paper85m).")
_JSON = flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
_SCALING = flags.DEFINE_bool(
    "scaling", False, "Also measure the scale-out section: pre-training (and with "
    "--scaling_rl_model, RL) tokens/s against --batch_sizes and --device_counts, and the compiled "
    "memory per device of --memory_model; each device count runs in a subprocess.")
_SCALING_MODEL = flags.DEFINE_enum(
    "scaling_model", "default", list(MODELS), "Model of the scale-out pre-training throughput.")
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
    "scaling_rl_model", "", f"Model, from {list(RL_MODELS)}, whose RL iteration the scale-out "
    "section also times at --scaling_rl_batch episodes; empty skips it.")
_SCALING_RL_BATCH = flags.DEFINE_integer(
    "scaling_rl_batch", 8, "Episodes per RL iteration in the scale-out section.")
_MEMORY_MODEL = flags.DEFINE_string(
    "memory_model", "paper85m", f"Model, from {list(MODELS)}, whose pre-train step and RL "
    "iteration the scale-out section compiles for their memory per device; empty skips it.")
_MEMORY_BATCH = flags.DEFINE_integer(
    "memory_batch", 8, "Pre-training batch and RL episodes of the memory figures.")


def timeit(fn, reps: int) -> float:
  """Best wall time in seconds of `reps` calls of `fn()`, after one untimed call that compiles."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def time_compiled(jitted, args: tuple, reps: int):
  """Best wall time in seconds of `reps` calls of `jitted(*args)`, and the last call's result.

  Unlike `timeit`, it compiles ahead of time instead of making an untimed call: one RL iteration of
  the 85M model takes about a minute on 2 CPU cores.
  """
  compiled = jitted.lower(*args).compile()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return min(times), out


def measure_matmul_peak(size: int = 2048, reps: int = 5) -> float:
  """GFLOP/s of a jitted float32 [size, size] @ [size, size] matmul: this machine's dense peak."""
  a, b = jax.random.normal(jax.random.key(0), (2, size, size), jnp.float32)
  dot = jax.jit(jnp.dot)
  return 2 * size**3 / timeit(lambda: dot(a, b), reps) / 1e9


def task_config(model_fields: dict, batch_size: int) -> ml_collections.ConfigDict:
  """The default pre-training config with another architecture and batch size."""
  config = pretrain_default.get_config()
  config.model.update(model_fields)
  config.batch_size = batch_size
  return config


def measure_pretrain(config: ml_collections.ConfigDict, reps: int) -> dict:
  """Time of one pre-training step (forward, backward, AdamW update) on the batch of step 0."""
  gpt = pretrain.model_config(config)
  optimizer = pretrain.make_optimizer(config)
  state = pretrain.init_state(config, optimizer)
  train_step = pretrain.make_train_step(gpt, optimizer)
  batch = [jnp.asarray(x) for x in pretrain.make_batch(config, 0)]
  seconds = timeit(lambda: train_step(state, *batch), reps)
  batch_size, length = batch[0].shape
  tokens = batch_size * length
  # Forward FLOPs from model.flops_per_token with the whole sequence as context, since attention
  # scores every position pair before masking. It leaves out the value head (4% of the default
  # model's forward FLOPs, 0.04% of the 85M one's) and elementwise work; backward costs twice the
  # forward; the AdamW update is timed but not counted. So the figure slightly understates the work.
  flops = 3 * model_lib.flops_per_token(gpt, length) * tokens
  return dict(train_batch=batch_size, train_length=length, train_step_s=seconds,
              train_tokens_per_s=tokens / seconds, train_gflops_per_s=flops / seconds / 1e9)


def generation_prompts(config: ml_collections.ConfigDict, batch: int) -> sampling.Problems:
  """`batch` pre-training problems, prompts padded to the longest N-digit prompt."""
  rng = np.random.default_rng([config.seed, batch])
  operands = arithmetic.sample_balanced(rng, batch, config.pretrain_max_digits)
  largest = 10**config.pretrain_max_digits - 1
  return sampling.encode_problems(operands, len(arithmetic.prompt(largest, largest)))


def _token_buffer(gpt: model_lib.GPTConfig, prompts, num_new: int):
  """The prompts [B, P] followed by `num_new` padding tokens: [B, P + num_new]."""
  if prompts.shape[1] + num_new > gpt.block_size:
    raise ValueError(f"prompt ({prompts.shape[1]}) + {num_new} generated tokens exceed the "
                     f"model's block_size ({gpt.block_size})")
  pad = jnp.full((prompts.shape[0], num_new), tokenizer.PAD_ID, jnp.int32)
  return jnp.concatenate([prompts.astype(jnp.int32), pad], axis=1)


def _greedy(logits):
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("gpt", "num_new"))
def cached_greedy(params, gpt: model_lib.GPTConfig, prompts, prompt_lengths, num_new: int):
  """Greedy decoding with the KV cache for exactly `num_new` tokens per row.

  Unlike `sampling.rollout`, rows never stop early: an untrained model emits the padding token at
  random, which would end rollouts after a varying number of tokens.

  Args:
    params: GPT parameters.
    gpt: the GPT's config.
    prompts: int32 [B, P], right-padded.
    prompt_lengths: int32 [B].
    num_new: tokens to generate per row.

  Returns:
    int32 [B, P + num_new]: row b holds its prompt, then its tokens from position prompt_lengths[b].
  """
  batch, length = prompts.shape
  rows = jnp.arange(batch)
  tokens = _token_buffer(gpt, prompts, num_new)
  cache = model_lib.init_cache(gpt, batch, length + num_new)
  out = model_lib.decode(params, gpt, prompts, cache, jnp.zeros(batch, jnp.int32))

  def step(i, carry):
    tokens, logits, cache = carry
    pos = prompt_lengths + i
    token = _greedy(logits)
    out = model_lib.decode(params, gpt, token[:, None], cache, pos)
    return tokens.at[rows, pos].set(token), out.logits[:, 0], out.cache

  init = (tokens, out.logits[rows, prompt_lengths - 1], out.cache)
  return jax.lax.fori_loop(0, num_new, step, init)[0]


@functools.partial(jax.jit, static_argnames=("gpt", "num_new", "steps"))
def recomputed_greedy(params, gpt: model_lib.GPTConfig, prompts, prompt_lengths, num_new: int,
                      steps: int):
  """Greedy decoding without a cache: every token reruns `model.forward` over the whole buffer.

  The buffer keeps its full size P + num_new throughout, so that one compilation serves every step;
  causal attention keeps the padding after a row's last token from changing its logits. Each step
  therefore costs the same, a forward pass over [B, P + num_new].

  Args:
    params, gpt, prompts, prompt_lengths, num_new: as in `cached_greedy`.
    steps: tokens actually generated, at most num_new; the rest stay padding.

  Returns:
    int32 [B, P + num_new], as in `cached_greedy`.
  """
  rows = jnp.arange(prompts.shape[0])

  def step(i, tokens):
    pos = prompt_lengths + i
    logits = model_lib.forward(params, gpt, tokens).logits[rows, pos - 1]
    return tokens.at[rows, pos].set(_greedy(logits))

  return jax.lax.fori_loop(0, steps, step, _token_buffer(gpt, prompts, num_new))


def measure_cached_generation(params, gpt: model_lib.GPTConfig, problems: sampling.Problems,
                              num_new: int, reps: int) -> float:
  """Generated tokens/s of `cached_greedy`, prefill of the prompts included."""
  seconds = timeit(lambda: cached_greedy(params, gpt, problems.prompts, problems.prompt_lengths,
                                         num_new), reps)
  return problems.prompts.shape[0] * num_new / seconds


def measure_recomputed_generation(params, gpt: model_lib.GPTConfig, problems: sampling.Problems,
                                  num_new: int, steps: int, reps: int) -> float:
  """Generated tokens/s of `recomputed_greedy`, timing `steps` of its `num_new` tokens."""
  seconds = timeit(lambda: recomputed_greedy(params, gpt, problems.prompts, problems.prompt_lengths,
                                             num_new, steps), reps)
  return problems.prompts.shape[0] * steps / seconds


def benchmark_model(config: ml_collections.ConfigDict, *, peak_gflops: float, gen_batch: int,
                    gen_tokens: int, recompute_tokens: int, reps: int, log=print) -> dict:
  """All figures of one model; `recompute_tokens` 0 skips recomputation."""
  gpt = pretrain.model_config(config)
  log(f"  pre-training step of {gpt}")
  figures = measure_pretrain(config, reps)
  figures["train_peak_fraction"] = figures["train_gflops_per_s"] / peak_gflops
  params = model_lib.init_params(gpt, jax.random.key(config.seed))
  figures["parameters"] = model_lib.num_params(params)
  problems = generation_prompts(config, gen_batch)
  log("  cached generation")
  cached = measure_cached_generation(params, gpt, problems, gen_tokens, reps)
  recomputed = speedup = None
  if recompute_tokens:
    log(f"  recomputed generation ({recompute_tokens} of {gen_tokens} tokens timed)")
    recomputed = measure_recomputed_generation(params, gpt, problems, gen_tokens,
                                               recompute_tokens, reps)
    speedup = cached / recomputed
  figures.update(gen_batch=gen_batch, gen_tokens=gen_tokens, cached_tokens_per_s=cached,
                 recompute_tokens_timed=recompute_tokens, recompute_tokens_per_s=recomputed,
                 cached_speedup=speedup)
  return figures


def rl_setup(model_fields: dict, batch: int):
  """The GPT, RL config and task of an RL measurement.

  Args:
    model_fields: the architecture, over the default pre-training config's.
    batch: episodes per iteration.

  Returns:
    (GPTConfig with the block size of the default pre-training config, the default RL config
    collecting `batch` episodes, the RL task "N + 1": 4-digit problems, 389-token episodes).
  """
  pretrain_config = task_config(model_fields, batch)
  config = rl_default.get_config()
  config.episodes_per_collect = batch
  # One update step per iteration, like the eager PyTorch reference; the default config's five
  # minibatches do the same FLOPs in smaller matmuls.
  config.num_minibatches = 1
  task = rl.make_task(pretrain_config.pretrain_max_digits, config.extra_digits)
  return pretrain.model_config(pretrain_config), config, task


def never_pad(params, margin: float = 100.0):
  """Random GPT parameters that never sample the padding token, so every episode runs to its limit.

  An untrained model emits the padding token (1 of 41) at random, which would end most episodes
  after a few dozen tokens instead of the 389 of the reference measurements. Feature 0 of the final
  hidden state is pinned to 1, and through the tied embedding only PAD reads it, with weight
  -margin: PAD's logit drops by `margin`, every other logit loses only that one feature's share.
  """
  ln_f = dict(scale=params["ln_f"]["scale"].at[0].set(0.0),
              bias=params["ln_f"]["bias"].at[0].set(1.0))
  wte = params["wte"]["embedding"].at[:, 0].set(0.0).at[tokenizer.PAD_ID, 0].set(-margin)
  return dict(params, ln_f=ln_f, wte=dict(embedding=wte))


def measure_rl(gpt: model_lib.GPTConfig, config: ml_collections.ConfigDict, task: rl.Task,
               reps: int) -> dict:
  """Times `sampling.rollout` alone and a whole `rl.make_runs_iteration` call (R = 1 run).

  The update time (reference pass, GAE, one pass of minibatch updates) is the difference: the
  iteration's own rollout differs from the one timed alone only by its key and the vmap over the
  single run, and since PAD is never sampled both generate the same number of tokens. Tokens are
  counted as actually generated (the iteration's mean episode length times its episodes).
  """
  params = never_pad(model_lib.init_params(gpt, jax.random.key(config.seed)))
  key = jax.random.key(config.seed)
  batch = rl.collect_batch(config, task, run_seed=0, iteration=0)
  rollout = jax.jit(lambda params, problems, key: sampling.rollout(
      params, gpt, problems, key, max_new_tokens=task.max_new_tokens,
      temperature=config.temperature, failure_reward=config.failure_reward))
  rollout_s, traj = time_compiled(rollout, (params, batch.problems, key), reps)
  run_arms = arms.run_arms(list(arms.parse(config.arms, config.beta))[:1])
  args = (rl.stack([rl.init_state(params, config, key)]), run_arms, rl.stack([batch]), params)
  iteration_s, (_, metrics) = time_compiled(rl.make_runs_iteration(gpt, config, task), args, reps)
  episodes = config.episodes_per_collect
  episode_length = float(metrics["episode_length"][0])
  generated = episode_length * episodes
  total = task.prompt_length + task.max_new_tokens
  # Forward FLOPs from model.flops_per_token with the whole buffer T as context, since both the
  # cached decode and the teacher-forced passes score every buffer position before masking: one
  # forward per generated token (the prompts' prefill left out), one forward over the T buffer
  # tokens of each episode for the reference pass, three (forward and backward) for the update.
  # As in measure_pretrain, the value head, elementwise work and the optimizer are left out.
  flops = model_lib.flops_per_token(gpt, total) * (generated + 4 * episodes * total)
  update_s = iteration_s - rollout_s
  return dict(parameters=model_lib.num_params(params), episodes=episodes,
              episode_length=episode_length, rollout_s=rollout_s, update_s=update_s,
              iteration_s=iteration_s,
              rollout_tokens_per_s=float(jnp.sum(traj.lengths)) / rollout_s,
              update_tokens_per_s=generated / update_s,
              iteration_tokens_per_s=generated / iteration_s,
              iteration_gflops_per_s=flops / iteration_s / 1e9)


def benchmark_rl(gpt: model_lib.GPTConfig, config: ml_collections.ConfigDict, task: rl.Task, *,
                 peak_gflops: float, reps: int, reference: dict | None) -> dict:
  """The RL figures of one model; `reference` (an RL_REFERENCE entry) None skips the ratios."""
  figures = measure_rl(gpt, config, task, reps)
  figures["iteration_peak_fraction"] = figures["iteration_gflops_per_s"] / peak_gflops
  for name in ("authors", "eager"):
    figures[f"vs_{name}"] = (figures["iteration_tokens_per_s"] / reference[name] if reference
                             else None)
  return figures


# Table rows: label and format of a model's figures.
_ROWS = (
    ("parameters", "{parameters:,}"),
    ("pre-train batch × length", "{train_batch} × {train_length}"),
    ("pre-train step", "{train_step_s:.3f} s"),
    ("pre-train tokens/s", "{train_tokens_per_s:,.0f}"),
    ("pre-train GFLOP/s", "{train_gflops_per_s:.1f}"),
    ("  fraction of matmul peak", "{train_peak_fraction:.1%}"),
    ("generation batch × tokens", "{gen_batch} × {gen_tokens}"),
    ("cached tokens/s", "{cached_tokens_per_s:,.1f}"),
    ("recomputed tokens/s", "{recompute_tokens_per_s:,.1f}"),
    ("  tokens timed per prompt", "{recompute_tokens_timed}"),
    ("cached speed-up", "{cached_speedup:.1f}×"),
)


def _cell(fmt: str, figures: dict) -> str:
  try:
    return fmt.format(**figures)
  except TypeError:  # None: the measurement was skipped
    return "skipped"


# Table rows of the RL figures.
_RL_ROWS = (
    ("parameters", "{parameters:,}"),
    ("episodes × mean length", "{episodes} × {episode_length:.0f}"),
    ("rollout", "{rollout_s:.2f} s"),
    ("update", "{update_s:.2f} s"),
    ("whole iteration", "{iteration_s:.2f} s"),
    ("rollout tokens/s", "{rollout_tokens_per_s:,.1f}"),
    ("update tokens/s", "{update_tokens_per_s:,.1f}"),
    ("iteration tokens/s", "{iteration_tokens_per_s:,.1f}"),
    ("iteration GFLOP/s", "{iteration_gflops_per_s:.1f}"),
    ("  fraction of matmul peak", "{iteration_peak_fraction:.1%}"),
    ("  × authors' implementation", "{vs_authors:,.0f}×"),
    ("  × eager PyTorch", "{vs_eager:.1f}×"),
)


def _table(rows, results: dict[str, dict]) -> list[str]:
  lines = [f"{'':28}" + "".join(f"{name:>16}" for name in results)]
  for label, fmt in rows:
    lines.append(f"{label:28}" + "".join(f"{_cell(fmt, f):>16}" for f in results.values()))
  return lines


def _met(value: float, target: float) -> str:
  return "met" if value >= target else "not met"


def format_report(peak_gflops: float, results: dict[str, dict]) -> str:
  """The figures as a table, one column per model, followed by the targets."""
  lines = [f"matmul peak (float32 2048² @ 2048², jitted jnp.dot): {peak_gflops:.1f} GFLOP/s", ""]
  if results:
    lines += _table(_ROWS, results) + [""]
  if "paper85m" in results:
    fraction = results["paper85m"]["train_peak_fraction"]
    lines.append(f"target: paper85m pre-train step ≥ {TARGET_PEAK_FRACTION:.0%} of the matmul "
                 f"peak: {fraction:.1%} ({_met(fraction, TARGET_PEAK_FRACTION)})")
  for name, f in results.items():
    if f["cached_speedup"] is not None:
      lines.append(f"target: {name} cached generation ≥ {TARGET_SPEEDUP:.0f}× recomputation at "
                   f"300 tokens: {f['cached_speedup']:.1f}× at {f['gen_tokens']} tokens "
                   f"({_met(f['cached_speedup'], TARGET_SPEEDUP)})")
  return "\n".join(lines)


def format_rl_report(results: dict[str, dict]) -> str:
  """The RL figures as a table, one column per model, followed by the targets."""
  lines = ["RL iteration (random weights, PAD never sampled, 4-digit problems):"]
  lines += _table(_RL_ROWS, results)
  lines.append("")
  for name, f in results.items():
    fraction = f["iteration_peak_fraction"]
    lines.append(f"target: {name} iteration ≥ {TARGET_RL_PEAK_FRACTION:.0%} of the matmul peak: "
                 f"{fraction:.1%} ({_met(fraction, TARGET_RL_PEAK_FRACTION)})")
    if f["vs_authors"] is None:
      continue
    reference = RL_REFERENCE[name]
    lines.append(f"target: {name} iteration ≥ {TARGET_VS_AUTHORS:.0f}× the authors' "
                 f"{reference['authors']:g} tokens/s: {f['vs_authors']:,.0f}× "
                 f"({_met(f['vs_authors'], TARGET_VS_AUTHORS)})")
    lines.append(f"target: {name} iteration ≥ {TARGET_VS_EAGER:.0f}× eager PyTorch's "
                 f"{reference['eager']:,g} tokens/s: {f['vs_eager']:.1f}× "
                 f"({_met(f['vs_eager'], TARGET_VS_EAGER)})")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Scale-out: throughput against batch size and device count, and memory per device.
#
# XLA creates simulated CPU devices only when XLA_FLAGS holds --xla_force_host_platform_device_count
# before jax starts, so each device count runs `scaling_worker` in a fresh interpreter. On GPUs and
# TPUs the same worker takes the first K real devices; a fresh process there also gives every
# executed memory measurement its own device-memory peak, which jax cannot reset.

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RESULT_PREFIX = "scaling-result: "
_WORKER_CODE = ("import json, sys; from experiments import benchmark; "
                "print(benchmark._RESULT_PREFIX + json.dumps(benchmark.scaling_worker("
                "json.loads(sys.argv[1]))), flush=True)")
_MIB = 2**20
PROGRAMS = ("pretrain", "rl")


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
  config = task_config(model_fields, batch_size)
  gpt = pretrain.model_config(config)
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
  step = sharding.shard_pretrain_step(gpt, optimizer, state, mesh)
  # Jitted once more so that it can be lowered ahead of time; the shardings of the inner jit stay.
  return jax.jit(step), (state, *batch), math.prod(batch[0].shape)


def _rl_program(model_fields: dict, episodes: int, mesh, concrete: bool):
  """The sharded RL iteration (one run, as in `measure_rl`) of `episodes` episodes on `mesh`.

  Returns:
    (jitted iteration, its arguments (state, arm, batch, ref_params)).
    With `concrete` False the arguments are `jax.ShapeDtypeStruct`s, enough to compile.
  """
  gpt, config, task = rl_setup(model_fields, episodes)
  batch = rl.collect_batch(config, task, run_seed=0, iteration=0)
  arm = jax.tree_util.tree_map(
      lambda x: x[0], arms.run_arms(list(arms.parse(config.arms, config.beta))[:1]))
  episode_sharding = sharding.batch_sharding(mesh)

  def init():  # the run's state and the reference parameters, as in measure_rl
    key = jax.random.key(config.seed)
    params = never_pad(model_lib.init_params(gpt, key))
    return rl.init_state(params, config, key), params

  if concrete:
    state, ref_params = _init_on_mesh(init, mesh)
    batch = jax.device_put(batch, episode_sharding)
    arm = jax.device_put(arm, sharding.replicated(mesh))
  else:
    state, ref_params = (_abstract(t, sharding.param_sharding(t, mesh))
                         for t in jax.eval_shape(init))
    batch = _abstract(batch, episode_sharding)
    arm = _abstract(arm, sharding.replicated(mesh))
  iteration = sharding.shard_rl_iteration(gpt, config, task, state, mesh)
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


def scaling_worker(spec: dict) -> dict:
  """The scale-out measurements on the first spec["devices"] devices; run by `measure_scaling`.

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
      seconds = timeit(lambda: step(*args), spec["reps"])
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
        seconds, (_, metrics) = time_compiled(iteration, args, spec["reps"])
        # Counted as in measure_rl: the tokens actually generated.
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


def _run_worker(spec: dict, extra_xla_flags: str = "") -> dict:
  """`scaling_worker(spec)` in a fresh interpreter, whose CPU platform has spec["devices"]
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
  env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH")) if p)
  proc = subprocess.run([sys.executable, "-c", _WORKER_CODE, json.dumps(spec)], cwd=_REPO_ROOT,
                        env=env, stdout=subprocess.PIPE, text=True, check=False)
  results = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT_PREFIX)]
  if proc.returncode or not results:
    raise RuntimeError(f"the scale-out worker on {spec['devices']} devices failed with exit status "
                       f"{proc.returncode} (its error is above)")
  return json.loads(results[-1][len(_RESULT_PREFIX):])


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
    memory_model: (name, fields) whose PROGRAMS are compiled at `memory_batch` for their memory
      per device, or None.
    extra_xla_flags: appended to every worker's XLA_FLAGS.
    log: progress lines.

  Returns:
    A JSON-ready dict: platform, device_kind, simulated (CPU devices), cpu_count, the settings,
    parameters, rows pretrain and rl (devices, data, params, batch, step_s, tokens_per_s,
    tokens_per_s_per_device, efficiency), rows memory (devices, data, params, program, batch,
    state_bytes and `compiled_memory`'s figures, measured_peak_bytes) and notes.
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


def _setting(flag, preset: dict, key: str):
  return preset[key] if flag.value is None else flag.value


def _validate_flags():
  for flag, known in ((_MODELS, MODELS), (_RL_MODELS, RL_MODELS)):
    unknown = set(flag.value) - set(known)
    if unknown:
      raise ValueError(f"unknown --{flag.name} {sorted(unknown)}; choose from {list(known)}")
  for flag in (_BATCH_SIZE, _GEN_BATCH, _GEN_TOKENS, _REPS, _RL_BATCH):
    if flag.value is not None and flag.value < 1:
      raise ValueError(f"--{flag.name} must be >= 1, got {flag.value}")
  if _RECOMPUTE_TOKENS.value is not None and _RECOMPUTE_TOKENS.value < 0:
    raise ValueError(f"--recompute_tokens must be >= 0, got {_RECOMPUTE_TOKENS.value}")
  if not _SCALING.value:
    return
  for flag, known in ((_SCALING_RL_MODEL, RL_MODELS), (_MEMORY_MODEL, MODELS)):
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


def _positive_ints(flag) -> list[int]:
  """The values of a list flag as integers >= 1; ValueError otherwise."""
  if not flag.value or not all(v.isdigit() and int(v) >= 1 for v in flag.value):
    raise ValueError(f"--{flag.name} takes integers >= 1, got {','.join(flag.value)!r}")
  return [int(v) for v in flag.value]


def _scaling_figures() -> dict:
  preset = MODELS[_SCALING_MODEL.value]
  rl_model = memory_model = None
  if _SCALING_RL_MODEL.value:
    rl_model = (_SCALING_RL_MODEL.value, RL_MODELS[_SCALING_RL_MODEL.value]["model"])
  if _MEMORY_MODEL.value:
    memory_model = (_MEMORY_MODEL.value, MODELS[_MEMORY_MODEL.value]["model"])
  print("scale-out section:", flush=True)
  return measure_scaling(
      model=(_SCALING_MODEL.value, preset["model"]), batch_sizes=_positive_ints(_BATCH_SIZES),
      device_counts=_positive_ints(_DEVICE_COUNTS), params_sizes=_MESH_PARAMS.value,
      reps=_setting(_REPS, preset, "reps"), rl_model=rl_model,
      rl_episodes=_SCALING_RL_BATCH.value, memory_model=memory_model,
      memory_batch=_MEMORY_BATCH.value, log=functools.partial(print, flush=True))


def _benchmark_rl_models(peak: float) -> dict[str, dict]:
  results = {}
  for name in _RL_MODELS.value:
    preset = RL_MODELS[name]
    gpt, config, task = rl_setup(preset["model"], _setting(_RL_BATCH, preset, "batch"))
    print(f"{name} RL iteration: {config.episodes_per_collect} episodes of {gpt}", flush=True)
    results[name] = benchmark_rl(gpt, config, task, peak_gflops=peak,
                                 reps=_setting(_REPS, preset, "reps"),
                                 reference=RL_REFERENCE.get(name))
  return results


def main(_):
  _validate_flags()
  # Before anything here touches a device: on GPUs and TPUs the workers need the devices' memory,
  # which this process would otherwise claim.
  scaling = _scaling_figures() if _SCALING.value else None
  print(f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores", flush=True)
  peak = measure_matmul_peak()
  results = {}
  for name in _MODELS.value:
    preset = MODELS[name]
    print(f"{name}:", flush=True)
    recompute = min(_setting(_RECOMPUTE_TOKENS, preset, "recompute_tokens"), _GEN_TOKENS.value)
    config = task_config(preset["model"], _setting(_BATCH_SIZE, preset, "batch_size"))
    results[name] = benchmark_model(
        config, peak_gflops=peak, gen_batch=_GEN_BATCH.value, gen_tokens=_GEN_TOKENS.value,
        recompute_tokens=recompute, reps=_setting(_REPS, preset, "reps"),
        log=functools.partial(print, flush=True))
  rl_results = _benchmark_rl_models(peak)
  print(format_report(peak, results))
  if rl_results:
    print("\n" + format_rl_report(rl_results))
  figures = dict(device=jax.devices()[0].device_kind, cpu_count=os.cpu_count(),
                 matmul_peak_gflops_per_s=peak, models=results, rl=rl_results)
  if scaling is not None:
    print("\n" + format_scaling_report(scaling))
    figures["scaling"] = scaling
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(figures, f, indent=2)
  print(json.dumps(figures))


if __name__ == "__main__":
  _cli.run(main)
