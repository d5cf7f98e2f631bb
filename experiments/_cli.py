"""What every experiment's main shares: config file paths and one-line errors for bad input."""
import os
import sys

from absl import app
from absl import logging

import critical_kl.configs
from critical_kl import checkpoints

CONFIG_DIR = os.path.dirname(critical_kl.configs.__file__)


def config_path(name: str) -> str:
  """Path of a config module shipped in `critical_kl/configs/`."""
  return os.path.join(CONFIG_DIR, f"{name}.py")


def run(main) -> None:
  """`app.run(main)`, turning expected errors (bad values, missing or foreign checkpoints) into one
  line on stderr and exit status 2 instead of a traceback."""
  def guarded(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the terminal
    try:
      return main(argv)
    except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  app.run(guarded)
