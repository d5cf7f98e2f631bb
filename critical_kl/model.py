"""GPT-2 in the nanoGPT layout, with the value head of the paper and a KV cache.

Learned absolute positions, pre-LayerNorm blocks with bias (eps 1e-5), causal self-attention, a
tanh-GELU MLP of width 4d, tied input/output embeddings, no dropout (SPEC §3). The value head is an
MLP d → 128 → 128 → 1 on the final hidden state (SPEC §5); it shares the trunk with the policy.

One `__call__` serves three uses:
  * teacher forcing: `cache=None`, causal attention over the T input tokens;
  * prefill and incremental decoding: `cache` holds keys and values for S positions; the T new tokens
    of row b are written at cache positions `cache_index[b] .. cache_index[b] + T - 1` and attend to
    every cache position up to their own. Rows may sit at different positions (prompts of different
    lengths), which is what a batch of problems needs.
"""
import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from critical_kl import tokenizer


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Architecture of the GPT; hashable so that it can be a static jit argument."""
  vocab_size: int = tokenizer.VOCAB_SIZE
  block_size: int = 512  # number of position embeddings: the longest sequence the model can read
  n_layer: int = 3
  n_head: int = 4
  n_embd: int = 128
  value_hidden: int = 128
  dtype: str = "float32"  # computation dtype; parameters stay float32

  def __post_init__(self):
    if min(self.vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd) < 1:
      raise ValueError(f"GPTConfig sizes must be positive, got {self}")
    if self.n_embd % self.n_head:
      raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")


# The paper's model: 85M parameters (SPEC §3).
PAPER_85M = dict(n_layer=12, n_head=12, n_embd=768)


class LayerCache(NamedTuple):
  """Keys and values of one attention layer, each [B, n_head, S, head_dim].

  Heads before positions: each decoding step then contracts contiguous [S, head_dim] blocks; the
  [B, S, H, D] layout made XLA transpose the whole cache at every step (several times slower on CPU).
  """
  k: jnp.ndarray
  v: jnp.ndarray


class ModelOutput(NamedTuple):
  logits: jnp.ndarray  # [B, T, V], distribution of the token after each position
  values: jnp.ndarray  # [B, T], V(prefix up to and including each position)
  cache: tuple[LayerCache, ...] | None


def init_cache(config: GPTConfig, batch: int, length: int) -> tuple[LayerCache, ...]:
  """An empty KV cache of `length` positions for `batch` rows."""
  head_dim = config.n_embd // config.n_head
  shape = (batch, config.n_head, length, head_dim)
  zeros = jnp.zeros(shape, jnp.dtype(config.dtype))
  return tuple(LayerCache(zeros, zeros) for _ in range(config.n_layer))


def _write(cache: jnp.ndarray, new: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
  """Writes new [B, H, T, D] into cache [B, H, S, D] at per-row offsets index [B]."""
  def one_row(c, n, i):
    return jax.lax.dynamic_update_slice(c, n.astype(c.dtype), (0, i, 0))
  return jax.vmap(one_row)(cache, new, index)


def _dense(features: int, config: GPTConfig, std: float = 0.02, name: str | None = None):
  return nn.Dense(features, dtype=jnp.dtype(config.dtype), name=name,
                  kernel_init=nn.initializers.normal(std), bias_init=nn.initializers.zeros)


def _layer_norm(config: GPTConfig, name: str | None = None):
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.dtype(config.dtype), name=name)


def _attend(q, k, v, visible):
  """One row: q [H, T, D] (already scaled), k, v [H, S, D], visible bool [T, S] → [T, H, D]."""
  scores = jnp.einsum("htd,hsd->hts", q, k).astype(jnp.float32)
  scores = jnp.where(visible[None], scores, -1e30)
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("hts,hsd->thd", weights, v)


def causal_attention(q, k, v):
  """Teacher-forced causal attention: q (already scaled), k, v [B, H, T, D] → [B, T, H, D].

  On a single CPU device the rows go one at a time through `lax.map`: a row's [H, T, T] scores
  stay in cache, where the batched [B, H, T, T] softmax is bound by memory traffic (about 4×
  slower forward at B = 64, T = 413), and `jax.checkpoint` recomputes each row's scores in the
  backward pass instead of storing them (forward and backward about 1.8× faster). Accelerators,
  and several CPU devices (a loop over a batch split across devices would gather it), keep the
  batched form.
  """
  length = q.shape[2]
  visible = jnp.arange(length)[None, :] <= jnp.arange(length)[:, None]
  one = lambda qkv: _attend(*qkv, visible)
  if jax.default_backend() != "cpu" or jax.device_count() > 1:
    return jax.vmap(one)((q, k, v))
  return jax.lax.map(jax.checkpoint(one), (q, k, v))


class CausalSelfAttention(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x, cache: LayerCache | None, cache_index):
    """x: [B, T, d]; cache: keys/values [B, H, S, D] or None; cache_index: [B] int32."""
    cfg = self.config
    batch, length, _ = x.shape
    head_dim = cfg.n_embd // cfg.n_head
    qkv = _dense(3 * cfg.n_embd, cfg, name="c_attn")(x)
    qkv = qkv.reshape(batch, length, 3 * cfg.n_head, head_dim).transpose(0, 2, 1, 3)
    q, k, v = jnp.split(qkv, 3, axis=1)  # each [B, H, T, D]
    q = q / math.sqrt(head_dim)
    if cache is None:
      out = causal_attention(q, k, v)
    else:
      k, v = _write(cache.k, k, cache_index), _write(cache.v, v, cache_index)
      cache = LayerCache(k, v)
      query_pos = jnp.arange(length)[None, :] + cache_index[:, None]
      visible = jnp.arange(k.shape[2])[None, None, :] <= query_pos[:, :, None]  # [B, T, S]
      out = jax.vmap(_attend)(q, k, v, visible)
    out = out.reshape(batch, length, cfg.n_embd)
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)  # nanoGPT's scaled init of residual outputs
    return _dense(cfg.n_embd, cfg, residual_std, name="c_proj")(out), cache


class Block(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x, cache, cache_index):
    cfg = self.config
    attn, cache = CausalSelfAttention(cfg, name="attn")(_layer_norm(cfg, "ln_1")(x), cache,
                                                         cache_index)
    x = x + attn
    h = _dense(4 * cfg.n_embd, cfg, name="c_fc")(_layer_norm(cfg, "ln_2")(x))
    h = nn.gelu(h, approximate=True)
    x = x + _dense(cfg.n_embd, cfg, 0.02 / math.sqrt(2 * cfg.n_layer), name="mlp_proj")(h)
    return x, cache


class GPT(nn.Module):
  """The policy (logits) and value head on a shared trunk."""
  config: GPTConfig

  @nn.compact
  def __call__(self, tokens, positions, cache=None, cache_index=None) -> ModelOutput:
    """Runs the model on T new tokens per row.

    Args:
      tokens: int32 [B, T].
      positions: int32 [B, T], indices into the position embedding (< block_size).
      cache: None for teacher forcing, or the tuple of `LayerCache` from `init_cache`.
      cache_index: int32 [B], cache position of each row's first new token (with a cache).

    Returns:
      ModelOutput with logits [B, T, V] (float32), values [B, T] (float32) and the updated cache.
    """
    cfg = self.config
    wte = nn.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=nn.initializers.normal(0.02),
                   name="wte")
    wpe = nn.Embed(cfg.block_size, cfg.n_embd, embedding_init=nn.initializers.normal(0.02),
                   name="wpe")
    x = (wte(tokens) + wpe(positions)).astype(jnp.dtype(cfg.dtype))
    new_cache = []
    for i in range(cfg.n_layer):
      x, layer_cache = Block(cfg, name=f"h_{i}")(x, None if cache is None else cache[i],
                                                 cache_index)
      new_cache.append(layer_cache)
    x = _layer_norm(cfg, "ln_f")(x)
    logits = wte.attend(x.astype(jnp.float32))  # tied embeddings
    h = x.astype(jnp.float32)
    for j in range(2):
      h = nn.relu(nn.Dense(cfg.value_hidden, name=f"value_{j}")(h))
    values = nn.Dense(1, name="value_out")(h)[..., 0]
    return ModelOutput(logits, values, None if cache is None else tuple(new_cache))


def init_params(config: GPTConfig, key: jax.Array):
  """Random parameters of a GPT with this config."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  return GPT(config).init(key, tokens, tokens)["params"]


def forward(params, config: GPTConfig, tokens, positions=None) -> ModelOutput:
  """Teacher-forced pass; positions default to 0..T-1 on every row."""
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return GPT(config).apply({"params": params}, tokens, positions)


def decode(params, config: GPTConfig, tokens, cache, cache_index) -> ModelOutput:
  """Runs T new tokens per row through the cache; positions are the cache positions."""
  positions = cache_index[:, None] + jnp.arange(tokens.shape[1])[None, :]
  return GPT(config).apply({"params": params}, tokens, positions, cache, cache_index)


def num_params(params) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))


def flops_per_token(config: GPTConfig, context: int) -> float:
  """Forward FLOPs per token: 2 per weight of the matmuls plus attention scores and mixing."""
  d, layers = config.n_embd, config.n_layer
  matmul_weights = layers * 12 * d * d + config.vocab_size * d
  attention = layers * 2 * 2 * context * d
  return 2.0 * matmul_weights + attention
