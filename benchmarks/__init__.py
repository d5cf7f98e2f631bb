"""Throughput of critical_kl against this machine's matmul peak and against peers run in the same
invocation. Run from the repository root; not installed with the library.

  python -m benchmarks          # everything (see __main__.py for the flags)
  python -m benchmarks.rl       # the RL iteration, ours and eager PyTorch's, side by side
"""
