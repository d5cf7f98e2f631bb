"""The GPT: shapes, parameter count, and KV-cache decoding equal to a full forward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critical_kl import model as model_lib

TINY = model_lib.GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=16, value_hidden=8)


def test_output_shapes():
  params = model_lib.init_params(TINY, jax.random.key(0))
  tokens = jnp.ones((3, 7), jnp.int32)
  out = model_lib.forward(params, TINY, tokens)
  assert out.logits.shape == (3, 7, TINY.vocab_size)
  assert out.values.shape == (3, 7)
  assert out.cache is None


def test_paper_model_has_85m_parameters():
  gpt = model_lib.GPTConfig(block_size=2048, **model_lib.PAPER_85M)
  shapes = jax.eval_shape(lambda: model_lib.init_params(gpt, jax.random.key(0)))
  assert 84e6 < model_lib.num_params(shapes) < 88e6


def test_embeddings_are_tied():
  params = model_lib.init_params(TINY, jax.random.key(0))
  assert "lm_head" not in params and params["wte"]["embedding"].shape == (TINY.vocab_size, 16)


def test_cached_decoding_matches_full_forward():
  """Prefill rows of different lengths, then decode token by token at per-row positions."""
  params = model_lib.init_params(TINY, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 12), 1, TINY.vocab_size)
  full = model_lib.forward(params, TINY, tokens)
  prefix = jnp.array([3, 5])
  cache = model_lib.init_cache(TINY, 2, 12)
  out = model_lib.decode(params, TINY, tokens[:, :5], cache, jnp.zeros(2, jnp.int32))
  for row, p in enumerate(np.asarray(prefix)):
    np.testing.assert_allclose(out.logits[row, :p], full.logits[row, :p], atol=1e-5)
  cache = out.cache
  for step in range(6):
    index = prefix + step
    new = jnp.take_along_axis(tokens, index[:, None], axis=1)
    out = model_lib.decode(params, TINY, new, cache, index)
    cache = out.cache
    for row in range(2):
      np.testing.assert_allclose(out.logits[row, 0], full.logits[row, index[row]], atol=1e-5)
      np.testing.assert_allclose(out.values[row, 0], full.values[row, index[row]], atol=1e-5)


def test_positions_shift_the_output():
  params = model_lib.init_params(TINY, jax.random.key(0))
  tokens = jnp.ones((1, 4), jnp.int32)
  a = model_lib.forward(params, TINY, tokens).logits
  b = model_lib.forward(params, TINY, tokens, jnp.arange(4)[None] + 3).logits
  assert not np.allclose(a, b)


def test_bad_config_raises():
  with pytest.raises(ValueError, match="divisible"):
    model_lib.GPTConfig(n_embd=10, n_head=3)


def _batched_causal_attention(q, k, v):
  length = q.shape[2]
  visible = jnp.arange(length)[None, :] <= jnp.arange(length)[:, None]
  scores = jnp.where(visible, jnp.einsum("bhtd,bhsd->bhts", q, k), -1e30)
  return jnp.einsum("bhts,bhsd->bthd", jax.nn.softmax(scores, axis=-1), v)


def test_row_wise_causal_attention_matches_batched_with_gradients():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 4, 2, 7, 5))
  row_loop = jax.default_backend() == "cpu" and jax.device_count() == 1
  assert ("scan" in str(jax.make_jaxpr(model_lib.causal_attention)(q, k, v))) == row_loop
  np.testing.assert_allclose(model_lib.causal_attention(q, k, v),
                             _batched_causal_attention(q, k, v), atol=1e-5)
  loss = lambda f: lambda *qkv: jnp.sum(jnp.sin(f(*qkv)))
  ours = jax.grad(loss(model_lib.causal_attention), argnums=(0, 1, 2))(q, k, v)
  theirs = jax.grad(loss(_batched_causal_attention), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_bfloat16_compute_stays_close_to_float32():
  """dtype="bfloat16" computes in bfloat16 with float32 parameters, logits and values; the
  pre-training loss and its gradient stay close to float32's (the accelerator option)."""
  from critical_kl import arithmetic  # pylint: disable=import-outside-toplevel
  from critical_kl import pretrain  # pylint: disable=import-outside-toplevel
  from critical_kl import tokenizer  # pylint: disable=import-outside-toplevel
  f32 = model_lib.GPTConfig(block_size=256, n_layer=2, n_head=4, n_embd=64, value_hidden=16)
  bf16 = model_lib.GPTConfig(**dict(vars(f32), dtype="bfloat16"))
  params = model_lib.init_params(bf16, jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  texts = [arithmetic.prompt(a, b) + arithmetic.scratchpad(a, b) for a, b in ((12, 345), (7, 89))]
  tokens, lengths = tokenizer.DEFAULT.encode_batch(texts)
  tokens = jnp.asarray(tokens)
  mask = jnp.asarray(np.arange(tokens.shape[1])[None] < lengths[:, None], jnp.float32)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  out = model_lib.forward(params, bf16, tokens)
  assert out.logits.dtype == jnp.float32 and out.values.dtype == jnp.float32
  results = {}
  for name, gpt in (("f32", f32), ("bf16", bf16)):
    results[name] = jax.value_and_grad(pretrain.completion_loss)(params, gpt, tokens, positions,
                                                                mask)
  (loss32, g32), (loss16, g16) = results["f32"], results["bf16"]
  np.testing.assert_allclose(loss16, loss32, rtol=1e-2)
  flat32, flat16 = (jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g)])
                    for g in (g32, g16))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(g16))
  cosine = jnp.dot(flat32, flat16) / (jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16))
  assert cosine > 0.99, cosine
  # The float32 run is not trivially equal: bfloat16 does change the numbers.
  assert float(loss16) != float(loss32)
