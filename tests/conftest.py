"""Test-wide settings: a persistent XLA compilation cache, so identical programs compile once."""
import os

import jax

jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
