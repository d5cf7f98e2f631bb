"""The pre-training step and generation of each model, against this machine's matmul peak.

Both models see the task of the default config (1..3-digit addition, 242-token training sequences);
only the architecture differs.
"""
import jax
import jax.numpy as jnp
import ml_collections

from critical_kl import model as model_lib
from critical_kl import pretrain
from critical_kl import pretrain_config
from benchmarks import common
from benchmarks import generation

# Per-model architecture, and the defaults of --batch_size, --reps and --recompute_tokens, sized so
# that the whole run stays near five minutes on 2 CPU cores. Every recomputed token costs the same
# (a forward pass over the full buffer), so timing a few of them gives the rate at --gen_tokens;
# the 85M model needs several seconds per token there, so it times only two.
MODELS = {
    "default": dict(model={}, batch_size=32, reps=3, recompute_tokens=100),
    "paper85m": dict(model=model_lib.PAPER_85M, batch_size=8, reps=1, recompute_tokens=2),
}

# The project's target on a CPU: the pre-training step of the 85M model.
TARGET_PEAK_FRACTION = 0.4


def measure_pretrain(config: ml_collections.ConfigDict, reps: int) -> dict:
  """Time of one pre-training step (forward, backward, AdamW update) on the batch of step 0."""
  typed = pretrain_config.PretrainConfig.from_config_dict(config)
  optimizer = pretrain.make_optimizer(typed)
  state = pretrain.init_state(typed, optimizer)
  train_step = pretrain.make_train_step(typed.model, optimizer)
  batch = [jnp.asarray(x) for x in pretrain.make_batch(typed, 0)]
  gpt = typed.model
  seconds, _ = common.timeit(lambda: train_step(state, *batch), reps)
  batch_size, length = batch[0].shape
  tokens = batch_size * length
  # Forward FLOPs from model.flops_per_token with the whole sequence as context, since attention
  # scores every position pair before masking. It leaves out the value head (4% of the default
  # model's forward FLOPs, 0.04% of the 85M one's) and elementwise work; backward costs twice the
  # forward; the AdamW update is timed but not counted. So the figure slightly understates the work.
  flops = 3 * model_lib.flops_per_token(gpt, length) * tokens
  return dict(train_batch=batch_size, train_length=length, train_step_s=seconds,
              train_tokens_per_s=tokens / seconds, train_gflops_per_s=flops / seconds / 1e9)


def benchmark_model(config: ml_collections.ConfigDict, *, peak_gflops: float, gen_batch: int,
                    gen_tokens: int, recompute_tokens: int, reps: int, log=print) -> dict:
  """All figures of one model: its pre-training step, then its generation (see `generation`)."""
  gpt = pretrain.model_config(config)
  log(f"  pre-training step of {gpt}")
  figures = measure_pretrain(config, reps)
  figures["train_peak_fraction"] = figures["train_gflops_per_s"] / peak_gflops
  params = model_lib.init_params(gpt, jax.random.key(config.seed))
  figures["parameters"] = model_lib.num_params(params)
  problems = generation.generation_prompts(config, gen_batch)
  figures.update(generation.measure_generation(
      common.never_pad(params), gpt, problems, gen_tokens=gen_tokens,
      recompute_tokens=recompute_tokens, reps=reps, log=log))
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


def format_report(peak_gflops: float, results: dict[str, dict]) -> str:
  """The figures as a table, one column per model, followed by the targets."""
  lines = [f"matmul peak (float32 2048² @ 2048², jitted jnp.dot): {peak_gflops:.1f} GFLOP/s", ""]
  if results:
    lines += common.table(_ROWS, results) + [""]
  if "paper85m" in results:
    fraction = results["paper85m"]["train_peak_fraction"]
    lines.append(f"target: paper85m pre-train step ≥ {TARGET_PEAK_FRACTION:.0%} of the matmul "
                 f"peak: {fraction:.1%} ({common.met(fraction, TARGET_PEAK_FRACTION)})")
  for name, f in results.items():
    if f["cached_speedup"] is not None:
      lines.append(f"target: {name} cached generation ≥ {generation.TARGET_SPEEDUP:.0f}× "
                   f"recomputation at 300 tokens: {f['cached_speedup']:.1f}× at "
                   f"{f['gen_tokens']} tokens "
                   f"({common.met(f['cached_speedup'], generation.TARGET_SPEEDUP)})")
  return "\n".join(lines)
