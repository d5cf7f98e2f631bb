"""critical_kl: the prioritized KL penalty for RL fine-tuning of language models, in JAX."""

__version__ = "0.1.0"
