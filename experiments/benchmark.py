"""Throughput of pre-training, generation and RL on this machine, against its own matmul peak.

  python -m experiments.benchmark                  # every model, about eight minutes on 2 CPU cores
  python -m experiments.benchmark --models=default --rl_models=rl_small --reps=5 --json=/tmp/b.json
  python -m experiments.benchmark --models= --rl_models=rl_small   # the RL part of one model only

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

Every time is the best of --reps calls after one warm-up call, which also compiles; the best rather
than the mean because other processes on the machine only ever add time. The RL calls are compiled
ahead of time instead of warmed up, which spares a whole extra iteration of the 85M model. The run
prints tables, then all figures as one JSON line.
"""
import functools
import json
import os
import time

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from critical_kl import arithmetic
from critical_kl import model as model_lib
from critical_kl import pretrain
from critical_kl import rl
from critical_kl import sampling
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

# Targets on a CPU, from the issue that asked for this benchmark.
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
# prompts, 389-token episodes), from the issue that asked for the RL figures: the authors'
# PyTorch/Tianshou implementation, and an eager PyTorch loop (Hugging Face generate() with its KV
# cache, then one forward and backward step with a frozen reference forward, batch 64).
RL_REFERENCE = {
    "rl_small": dict(authors=12.0, eager=2350.0),
    "paper85m": dict(authors=0.3, eager=65.0),
}
# Targets of a whole RL iteration at equal model size, from the same issue.
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
  args = (rl.stack([rl.init_state(params, config, key)]), jnp.array([rl.run_beta(config)]),
          rl.stack([batch.problems]), rl.stack([batch.critical]), params)
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
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(figures, f, indent=2)
  print(json.dumps(figures))


if __name__ == "__main__":
  _cli.run(main)
