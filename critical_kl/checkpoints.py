"""Orbax checkpoints: training state for resumption, and small exported models.

A training directory `workdir/checkpoints/<step>/` holds two items: `state` (a pytree of parameters,
optimizer state, step and PRNG key data) and `config` (the run's config as JSON, so that a checkpoint
is never loaded into a model of another shape). An exported model (what the package ships) holds
`params` and `config` only. The config's "vocabulary" (`tokenizer.Vocabulary.to_dict`) gives the
text of each token id; a model saved without one (the shipped model) uses `tokenizer.DEFAULT`.

Whatever can be wrong with a checkpoint on disk (a missing or damaged file, a config that does not
parse or describes another model or run) is raised as one `CheckpointError` naming the path and the
problem, not as Orbax's or TensorStore's own exceptions.
"""
import contextlib
import gc
import json
import logging
import math
import os
import shutil
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from critical_kl import distributed
from critical_kl import divergence
from critical_kl import model as model_lib
from critical_kl import tokenizer


# The model shipped with the package: pre-trained on 1..5 digits (configs/phenomenon.py).
DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained",
                             "addition_n5")


class CheckpointError(ValueError):
  """A checkpoint is missing or does not match the requested config."""


def prepare_workdir(workdir: str, overwrite: bool) -> str:
  """Returns the checkpoint directory `workdir/checkpoints`; with `overwrite`, removes earlier
  checkpoints first.

  Across processes (sharing the directory) only the main one removes, and all wait for it.
  """
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  if overwrite and os.path.isdir(ckpt_dir) and distributed.is_main():
    shutil.rmtree(ckpt_dir)
  distributed.sync("prepare_workdir")
  os.makedirs(ckpt_dir, exist_ok=True)
  return ckpt_dir


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "config"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, config: dict) -> None:
  """Saves `state` as checkpoint `step`.

  Raises:
    divergence.DivergenceError: when `state` holds a NaN or an infinity; nothing is written, so
      the latest checkpoint stays the last finite one.
  """
  if not divergence.all_finite(state):
    latest = mngr.latest_step()
    raise divergence.DivergenceError(
        f"step {step}: the parameters or optimizer state are not finite; not saved (last good "
        f"checkpoint: {'none' if latest is None else os.path.join(mngr.directory, str(latest))})")
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          config=ocp.args.JsonSave(config)))
  mngr.wait_until_finished()


class _DropEchoesOf(logging.Filter):
  """Drops asyncio's "Future exception was never retrieved" reports about reads under `where`."""

  def __init__(self, where: str):
    super().__init__()
    self.where = where

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("exception was never retrieved" in message and self.where in message)


@contextlib.contextmanager
def _one_error_only(where: str):
  """Orbax reads the arrays of a checkpoint in concurrent coroutines; when a damaged file makes
  several fail, the first error is raised and the others surface later, as "Exception ignored"
  tracebacks or as asyncio's "Future exception was never retrieved" log records, whenever the
  garbage collector reaches them. Inside this context the first kind is dropped; after a failure,
  the second kind is dropped for reads under `where` from then on (they may come at exit). The
  raised error is kept."""
  previous = sys.unraisablehook
  sys.unraisablehook = lambda _: None
  try:
    yield
  except Exception:
    logging.getLogger("asyncio").addFilter(_DropEchoesOf(os.path.abspath(where)))
    raise
  finally:
    gc.collect()
    sys.unraisablehook = previous


def _reason(error: Exception) -> str:
  """The first line of an exception, short enough for a one-line message."""
  lines = str(error).strip().splitlines()
  # TensorStore appends a dump of its spec to the sentence that matters.
  text = (lines[0] if lines else "").split(" See full TensorStore details")[0]
  return f"{type(error).__name__}: {text[:240]}"


def _restore_step(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, config: dict,
                  same_fields: tuple[str, ...]):
  """Restores checkpoint `step`; CheckpointError if it is damaged or of another model or run."""
  where = os.path.join(mngr.directory, str(step))
  try:
    saved = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  except Exception as e:  # pylint: disable=broad-except  (any failure means: damaged)
    raise CheckpointError(f"checkpoint {where} is damaged: its config cannot be read "
                          f"({_reason(e)})") from e
  check_same_config(saved, config, where, same_fields)
  try:
    with _one_error_only(where):
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"checkpoint {where} is damaged: its state cannot be restored "
                          f"({_reason(e)})") from e
  return restored["state"]


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any, config: dict,
                   resume_previous: bool = False, log=print,
                   same_fields: tuple[str, ...] = ("model",)):
  """Restores the latest state, or returns None when the directory has no checkpoint.

  Args:
    mngr: the run's manager.
    abstract_state: the state's structure (arrays or `jax.ShapeDtypeStruct`s, with shardings).
    config: the run's saved config.
    resume_previous: when the latest checkpoint is damaged, delete it and restore the one before
      (a run killed while the disk filled up, say) instead of raising.
    log: where the fall-back is reported.
    same_fields: the top-level fields of `config` that must equal the checkpoint's (a resumed
      run must be the same model, and for RL the same runs); the others may change on resume.

  Raises:
    CheckpointError: when the checkpoint's config differs from `config` in one of `same_fields`
      (checked before the state is read, so a mismatch is never taken for damage), or when the
      latest checkpoint is damaged and `resume_previous` is False (or no earlier one is intact).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  for i, step in enumerate(steps):
    try:
      return _restore_step(mngr, step, abstract_state, config, same_fields)
    except CheckpointError as e:
      if "damaged" not in str(e):
        raise
      if i + 1 == len(steps):
        raise CheckpointError(f"{e}; no earlier checkpoint to resume from") from None
      if not resume_previous:
        raise CheckpointError(f"{e}; pass --resume_previous to delete it and resume from step "
                              f"{steps[i + 1]}") from None
      log(f"{e}; deleting it and resuming from step {steps[i + 1]}")
      mngr.delete(step)
  return None


def check_same_config(saved: dict, wanted: dict, where, fields: tuple[str, ...] = ("model",)):
  """CheckpointError naming each difference between `saved` and `wanted` in `fields`."""
  # Compared as JSON, the form `saved` was read back in (tuples become lists).
  wanted = json.loads(json.dumps({k: wanted.get(k) for k in fields}))
  diffs = []
  for field in fields:
    a, b = saved.get(field), wanted[field]
    if isinstance(a, dict) and isinstance(b, dict):
      diffs += [(f"{field}.{k}", a.get(k), v) for k, v in b.items() if not _same(a.get(k), v)]
    elif not _same(a, b):
      diffs.append((field, a, b))
  if diffs:
    details = ", ".join(f"{k}: saved {_short(a)} vs requested {_short(b)}" for k, a, b in diffs)
    what = "model" if fields == ("model",) else "run"
    raise CheckpointError(f"checkpoint at {where} belongs to another {what} config ({details}); "
                          "use another workdir, or overwrite this one")


def _same(a, b) -> bool:
  """Equal JSON values; floats to 1e-5 relative, since a value computed in float32 from the
  reference (the matched arm's α factor) differs in its last bits between CPU models."""
  if isinstance(a, float) or isinstance(b, float):
    return (isinstance(a, (int, float)) and isinstance(b, (int, float))
            and math.isclose(a, b, rel_tol=1e-5))
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  return a == b


def _short(value, limit: int = 160) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


def export(directory: str, params: Any, config: dict, overwrite: bool = False) -> None:
  """Writes `params` and `config` to a fresh directory (a model to ship or share)."""
  path = os.path.abspath(directory)
  if os.path.exists(path) and not overwrite:
    raise CheckpointError(f"{path} exists; pass overwrite=True to replace it")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(path, ocp.args.Composite(params=ocp.args.StandardSave(params),
                                        config=ocp.args.JsonSave(config)), force=overwrite)


def load_config(directory: str) -> dict:
  """The config saved with an exported model or with the latest step of a training directory.

  Raises:
    CheckpointError: when it is missing, does not parse, or is not a model's config.
  """
  path = os.path.join(_model_dir(directory), "config", "metadata")
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"config {path} cannot be read ({_reason(e)})") from None
  missing = [k for k in ("model", "pretrain_max_digits") if not isinstance(config, dict)
             or k not in config]
  if missing:
    raise CheckpointError(f"config {path} is not a critical_kl model config (no "
                          f"{', '.join(missing)})")
  return config


def _gpt_config(config: dict, path: str) -> model_lib.GPTConfig:
  try:
    return model_lib.GPTConfig(**config["model"])
  except TypeError as e:
    raise CheckpointError(f"config of {path} describes no critical_kl model ({_reason(e)})") from None


def load_model(directory: str) -> tuple[Any, model_lib.GPTConfig, dict]:
  """Loads an exported model or the latest step of a training directory.

  Returns:
    (params, GPTConfig, the full config dict saved with it). For an ensemble (a config with
    `ensemble_members` K > 0, see `pretrain`) the params are the K members' stacked on a leading
    axis. The dict's "vocabulary" is always
    there: the stored one, or `tokenizer.DEFAULT`'s when none is stored;
    `tokenizer.Vocabulary.from_dict(config["vocabulary"])` gives the model's vocabulary.

  Raises:
    CheckpointError: naming the path, when the model is missing, damaged, its vocabulary is
      unreadable, or its arrays do not match its config.
  """
  path = _model_dir(directory)
  config = load_config(path)
  gpt_config = _gpt_config(config, path)
  config.setdefault("vocabulary", tokenizer.DEFAULT.to_dict())
  try:
    vocabulary = tokenizer.Vocabulary.from_dict(config["vocabulary"])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"the vocabulary saved at {path} is unreadable: {e!r}") from None
  if len(vocabulary) != gpt_config.vocab_size:
    raise CheckpointError(f"the vocabulary saved at {path} has {len(vocabulary)} tokens, the "
                          f"model's vocab_size is {gpt_config.vocab_size}")
  try:
    with _one_error_only(path):
      return _restore_params(path, gpt_config, ensemble_members(config)), gpt_config, config
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (Orbax and TensorStore raise many kinds)
    raise CheckpointError(f"model {path} is damaged or does not match its config "
                          f"({_reason(e)})") from e


def ensemble_members(config: dict) -> int:
  """K for a saved ensemble (its parameters stacked on a leading axis of size K), else 0."""
  return int(config.get("ensemble_members") or 0)


def check_single(config: dict, where: str) -> None:
  """Raises CheckpointError when the model saved with `config` is an ensemble."""
  if ensemble_members(config):
    raise CheckpointError(f"{where} is an ensemble of {ensemble_members(config)} models, not one "
                          f"model")


def _restore_params(path: str, gpt_config: model_lib.GPTConfig, members: int) -> Any:
  # On this process's first device: with several processes each restores its own full copy
  # (Orbax refuses a target without shardings when the topology differs from the saved one).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  lead = (members,) if members else ()
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(lead + x.shape, x.dtype, sharding=device),
      jax.eval_shape(lambda: model_lib.init_params(gpt_config, jax.random.key(0))))
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    if os.path.isdir(os.path.join(path, "params")):
      item = ckptr.restore(path, ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
      return item["params"]
    if not os.path.isdir(os.path.join(path, "state")):
      raise CheckpointError(f"model {path} has neither params/ nor state/")
    state = {"params": abstract}
    restored = ckptr.restore(path, ocp.args.Composite(state=ocp.args.PyTreeRestore(
        state, restore_args=ocp.checkpoint_utils.construct_restore_args(state),
        partial_restore=True)))
    return restored["state"]["params"]


def _model_dir(directory: str) -> str:
  """Resolves a training directory to its latest step; checks that a model is there."""
  path = os.path.abspath(directory)
  if not os.path.isdir(path):
    raise CheckpointError(f"no checkpoint at {path}")
  if os.path.isdir(os.path.join(path, "config")):
    return path
  steps = [int(d) for d in os.listdir(path) if d.isdigit()]
  if not steps:
    nested = os.path.join(path, "checkpoints")
    if os.path.isdir(nested):
      return _model_dir(nested)
    raise CheckpointError(f"{path} holds no checkpoint (no config/ and no step directories)")
  return os.path.join(path, str(max(steps)))
