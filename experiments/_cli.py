"""What every experiment's main shares: config file paths, one-line errors for bad input, and the
flags of runs spread over several processes (hosts)."""
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging

import critical_kl.configs
from critical_kl import checkpoints
from critical_kl import distributed
from critical_kl import divergence

CONFIG_DIR = os.path.dirname(critical_kl.configs.__file__)


def config_path(name: str) -> str:
  """Path of a config module shipped in `critical_kl/configs/`."""
  return os.path.join(CONFIG_DIR, f"{name}.py")


_distributed_flags = None


def define_resume_flag():
  """--resume_previous, for the experiments that resume from checkpoints."""
  return flags.DEFINE_bool(
      "resume_previous", False, "When the latest checkpoint in --workdir is damaged, delete it and "
      "resume from the one before (without it, the run stops and says so).")


def define_distributed_flags() -> None:
  """Defines --distributed, --coordinator_address, --num_processes and --process_id.

  Called at import by the experiments that train on a device mesh; `run` then starts
  `jax.distributed` before `main` when --distributed is given.
  """
  global _distributed_flags
  _distributed_flags = dict(
      enabled=flags.DEFINE_bool(
          "distributed", False, "One process of a run over several hosts: calls "
          "jax.distributed.initialize() first (TPU VMs, SLURM and Open MPI need nothing else)."),
      coordinator_address=flags.DEFINE_string(
          "coordinator_address", None, "With --distributed: host:port of process 0 (default: "
          "detected)."),
      num_processes=flags.DEFINE_integer(
          "num_processes", None, "With --distributed: number of processes (default: detected)."),
      process_id=flags.DEFINE_integer(
          "process_id", None, "With --distributed: this process's index, 0 the main one "
          "(default: detected)."))


def _start_distributed() -> None:
  if _distributed_flags is None or not _distributed_flags["enabled"].value:
    return
  distributed.initialize(_distributed_flags["coordinator_address"].value,
                         _distributed_flags["num_processes"].value,
                         _distributed_flags["process_id"].value)


def _exit_with(error: Exception, status: int) -> None:
  """Prints the one error line and exits; background reads that fail after the error (Orbax's
  other coroutines on a damaged checkpoint, reported when collected, as unraisable exceptions or
  as asyncio log records) stay silent instead of adding tracebacks."""
  sys.unraisablehook = lambda _: None
  std_logging.getLogger("asyncio").disabled = True
  print(f"error: {error}", file=sys.stderr)
  sys.exit(status)


def run(main) -> None:
  """`app.run(main)`, turning expected errors into one line on stderr instead of a traceback: exit
  status 2 for bad input (values, missing, damaged or foreign checkpoints), 3 for a run that
  diverged (a NaN or an infinity)."""
  def guarded(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the terminal
    try:
      _start_distributed()
      return main(argv)
    except divergence.DivergenceError as e:
      _exit_with(e, 3)
    except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as e:
      _exit_with(e, 2)
  app.run(guarded)
