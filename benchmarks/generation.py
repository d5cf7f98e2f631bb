"""Greedy generation with the KV cache (the library's rollout) against full recomputation.

The cached figure is `sampling.rollout` itself, greedy, on parameters that never sample the padding
token (`common.never_pad`), so that every row generates all of its tokens; the episode rules that
it applies on the way cost a little, and are part of what every RL collect pays. The baseline,
`recomputed_greedy`, has no counterpart in the library: it reruns `model.forward` over the whole
buffer for every new token.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from critical_kl import arithmetic
from critical_kl import model as model_lib
from critical_kl import sampling
from critical_kl import task as task_lib
from critical_kl import tokenizer
from benchmarks import common

# The project's target on a CPU: cached over recomputed generation, at 300 generated tokens.
TARGET_SPEEDUP = 10.0


def generation_prompts(config: ml_collections.ConfigDict, batch: int) -> task_lib.Problems:
  """`batch` pre-training problems, prompts padded to the longest N-digit prompt."""
  rng = np.random.default_rng([config.seed, batch])
  operands = arithmetic.sample_balanced(rng, batch, config.pretrain_max_digits)
  largest = 10**config.pretrain_max_digits - 1
  return task_lib.encode_problems(operands, len(arithmetic.prompt(largest, largest)))


@functools.partial(jax.jit, static_argnames=("gpt", "num_new", "steps"))
def recomputed_greedy(params, gpt: model_lib.GPTConfig, prompts, prompt_lengths, num_new: int,
                      steps: int):
  """Greedy decoding without a cache: every token reruns `model.forward` over the whole buffer.

  The buffer keeps its full size P + num_new throughout, so that one compilation serves every step;
  causal attention keeps the padding after a row's last token from changing its logits. Each step
  therefore costs the same, a forward pass over [B, P + num_new].

  Args:
    params: GPT parameters.
    gpt: the GPT's config.
    prompts: int32 [B, P], right-padded.
    prompt_lengths: int32 [B].
    num_new: tokens per row that the buffer holds after the prompt.
    steps: tokens actually generated, at most num_new; the rest stay padding.

  Returns:
    int32 [B, P + num_new]: row b holds its prompt, then its tokens from position prompt_lengths[b].
  """
  batch, length = prompts.shape
  if length + num_new > gpt.block_size:
    raise ValueError(f"prompt ({length}) + {num_new} generated tokens exceed the model's "
                     f"block_size ({gpt.block_size})")
  pad = jnp.full((batch, num_new), tokenizer.PAD_ID, jnp.int32)
  rows = jnp.arange(batch)

  def step(i, tokens):
    pos = prompt_lengths + i
    logits = model_lib.forward(params, gpt, tokens).logits[rows, pos - 1]
    return tokens.at[rows, pos].set(jnp.argmax(logits, axis=-1).astype(jnp.int32))

  return jax.lax.fori_loop(0, steps, step, jnp.concatenate([prompts.astype(jnp.int32), pad], 1))


def measure_cached_generation(params, gpt: model_lib.GPTConfig, problems: task_lib.Problems,
                              num_new: int, reps: int) -> float:
  """Generated tokens/s of greedy `sampling.rollout` (prefill of the prompts included).

  `params` should never sample PAD (`common.never_pad`); the tokens counted are those generated.
  """
  key = jax.random.key(0)
  rollout = lambda: sampling.rollout(params, gpt, problems, key, rules=task_lib.RULES,
                                     max_new_tokens=num_new, greedy=True)
  seconds, traj = common.timeit(rollout, reps)
  return float(jnp.sum(traj.lengths)) / seconds


def measure_recomputed_generation(params, gpt: model_lib.GPTConfig, problems: task_lib.Problems,
                                  num_new: int, steps: int, reps: int) -> float:
  """Generated tokens/s of `recomputed_greedy`, timing `steps` of its `num_new` tokens."""
  seconds, _ = common.timeit(lambda: recomputed_greedy(
      params, gpt, problems.prompts, problems.prompt_lengths, num_new, steps), reps)
  return problems.prompts.shape[0] * steps / seconds


def measure_generation(params, gpt: model_lib.GPTConfig, problems: task_lib.Problems, *,
                       gen_tokens: int, recompute_tokens: int, reps: int, log=print) -> dict:
  """The generation figures of one model; `recompute_tokens` 0 skips recomputation."""
  log("  cached generation")
  cached = measure_cached_generation(params, gpt, problems, gen_tokens, reps)
  recomputed = speedup = None
  if recompute_tokens:
    log(f"  recomputed generation ({recompute_tokens} of {gen_tokens} tokens timed)")
    recomputed = measure_recomputed_generation(params, gpt, problems, gen_tokens,
                                               recompute_tokens, reps)
    speedup = cached / recomputed
  return dict(gen_batch=problems.prompts.shape[0], gen_tokens=gen_tokens,
              cached_tokens_per_s=cached, recompute_tokens_timed=recompute_tokens,
              recompute_tokens_per_s=recomputed, cached_speedup=speedup)
