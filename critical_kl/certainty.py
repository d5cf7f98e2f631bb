"""The reference model's certainty Ĵ ∈ [0, 1] (the paper's Eq. 2), of one model or an ensemble.

The prioritized KL penalty weighs each token's penalty by Ĵ^β
(`token_weights.prioritized_weights`): where the reference is uncertain, e.g. on critical tokens,
the policy may explore.

- `certainty`: Ĵ of one reference, by one of `CERTAINTY_METHODS` (the paper's and the authors'
  variants);
- `ensemble_logits`, `ensemble_certainty`, `ensemble_mutual_information`: the same for the
  mixture of K reference models (the posterior predictive of the paper's footnote 2), and the
  members' disagreement.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np

from critical_kl import softmax

CERTAINTY_METHODS = ("negentropy", "negentropy_max_prob", "max_prob")


def check_method(method: str) -> None:
  """Raises ValueError naming the valid methods unless `method` is one of CERTAINTY_METHODS."""
  if method not in CERTAINTY_METHODS:
    raise ValueError(f"unknown certainty method {method!r}; valid names: "
                     f"{', '.join(CERTAINTY_METHODS)}")


def certainty(ref_logits: chex.Array,
              method: str = "negentropy_max_prob",
              temperature: float = 4.0) -> jnp.ndarray:
  """Certainty Ĵ ∈ [0, 1] of the reference model, p = softmax(ref_logits / temperature).

  Methods (names from the authors' code), with |V| = ref_logits.shape[-1]:
    "negentropy" (paper Eq. 2): 1 − H(p) / log|V|;
    "negentropy_max_prob" (authors' default): 1 + log(max p) / log|V|;
    "max_prob": max p.
  Ĵ is 1 for a one-hot p; the first two are 0 for a uniform p, "max_prob" is 1/|V|.

  Args:
    ref_logits: [..., V] with V ≥ 2.
    method: one of `CERTAINTY_METHODS`.
    temperature: τ_c > 0.

  Returns:
    [...], Ĵ, never differentiated.
  """
  softmax.check_choice("certainty method", method, CERTAINTY_METHODS)
  ref_logits = jnp.asarray(ref_logits)
  if ref_logits.shape[-1] < 2:
    raise ValueError(f"certainty needs a vocabulary of at least 2, got {ref_logits.shape}.")
  log_probs = softmax.log_softmax(ref_logits, temperature)
  log_vocab = np.log(ref_logits.shape[-1])
  if method == "negentropy":
    result = 1.0 - softmax.entropy(log_probs) / log_vocab
  elif method == "negentropy_max_prob":
    result = 1.0 + jnp.max(log_probs, axis=-1) / log_vocab
  else:
    result = jnp.exp(jnp.max(log_probs, axis=-1))
  # Rounding can put a near-uniform Ĵ slightly below 0, and Ĵ^β of a negative base is NaN.
  return jax.lax.stop_gradient(jnp.clip(result, 0.0, 1.0))


def _member_log_probs(member_logits: chex.Array, temperature: float) -> jnp.ndarray:
  """log softmax(member_logits / τ) of K models, [K, ..., V] → [K, ..., V]."""
  member_logits = jnp.asarray(member_logits)
  if member_logits.ndim < 2:
    raise ValueError(f"member_logits must be [K, ..., V], got shape {member_logits.shape}.")
  return softmax.log_softmax(member_logits, temperature)


def _mixture(member_log_probs: jnp.ndarray) -> jnp.ndarray:
  """log of the mean over axis 0 of the members' probabilities, [K, ..., V] → [..., V]."""
  return jax.nn.logsumexp(member_log_probs, axis=0) - np.log(member_log_probs.shape[0])


def ensemble_logits(member_logits: chex.Array, temperature: float) -> jnp.ndarray:
  """Logits L of the mixture of K models: softmax(L / τ) = mean_k softmax(member_logits[k] / τ).

  The mixture is the posterior predictive of an ensemble of reference models (the paper's
  footnote 2). L = τ·log p̄, so L stands for one reference's logits wherever these are used at the
  same τ: `losses.token_logp_and_entropy`, `losses.exact_kl`, the losses' `ref_logits`. The
  mixture at another temperature is not a rescaling of L (the mean does not commute with the
  temperature); compute it again at that temperature.

  Args:
    member_logits: [K, ..., V], the logits of the K members.
    temperature: τ > 0.

  Returns:
    [..., V], L.
  """
  return temperature * _mixture(_member_log_probs(member_logits, temperature))


def ensemble_mutual_information(member_logits: chex.Array,
                                temperature: float = 4.0) -> jnp.ndarray:
  """Disagreement of K models, I = H(p̄) − mean_k H(p_k), divided by log|V|; in [0, 1].

  With p_k = softmax(member_logits[k] / τ) and p̄ their mean. I is the epistemic part of the
  mixture's entropy (the mutual information between the prediction and the member); it is 0 when
  the members agree and at most min(log K, log|V|) / log|V|.

  Args:
    member_logits: [K, ..., V] with V ≥ 2.
    temperature: τ > 0.

  Returns:
    [...], I / log|V|, never differentiated.
  """
  member_log_probs = _member_log_probs(member_logits, temperature)
  information = (softmax.entropy(_mixture(member_log_probs))
                 - jnp.mean(softmax.entropy(member_log_probs), axis=0))
  # Rounding leaves identical members a tiny negative difference.
  normalized = jnp.clip(information / np.log(member_log_probs.shape[-1]), 0.0, 1.0)
  return jax.lax.stop_gradient(normalized)


def ensemble_certainty(member_logits: chex.Array,
                       method: str = "negentropy_max_prob",
                       temperature: float = 4.0,
                       epistemic: bool = False) -> jnp.ndarray:
  """Certainty Ĵ ∈ [0, 1] of the mixture of K reference models, as `certainty` of one model.

  Ĵ is computed on p̄ = mean_k softmax(member_logits[k] / τ_c), so the members' disagreement
  already lowers it: for "negentropy", H(p̄) = mean_k H(p_k) + I. With `epistemic`, the
  disagreement I / log|V| (`ensemble_mutual_information`) is subtracted once more, clipped at
  0: a stricter certainty that frees the tokens on which the members disagree even where their
  mixture looks confident (the overconfidence named in the paper's limitations).

  Args:
    member_logits: [K, ..., V] with V ≥ 2; K = 1 gives `certainty(member_logits[0], ...)`.
    method: one of `CERTAINTY_METHODS`.
    temperature: τ_c > 0.
    epistemic: subtract the normalised mutual information between the members.

  Returns:
    [...], Ĵ, never differentiated.
  """
  result = certainty(ensemble_logits(member_logits, temperature), method, temperature)
  if epistemic:
    result = jnp.clip(result - ensemble_mutual_information(member_logits, temperature), 0.0, 1.0)
  return result
