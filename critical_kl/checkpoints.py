"""Orbax checkpoints: training state for resumption, and small exported models.

A training directory `workdir/checkpoints/<step>/` holds two items: `state` (a pytree of parameters,
optimizer state, step and PRNG key data) and `config` (the run's config as JSON, so that a checkpoint
is never loaded into a model of another shape). An exported model (what the package ships) holds
`params` and `config` only. The config's "vocabulary" (`tokenizer.Vocabulary.to_dict`) gives the
text of each token id; a model saved without one (the shipped model) uses `tokenizer.DEFAULT`.
"""
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from critical_kl import model as model_lib
from critical_kl import tokenizer


# The model shipped with the package: pre-trained on 1..5 digits (configs/phenomenon.py).
DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained",
                             "addition_n5")


class CheckpointError(ValueError):
  """A checkpoint is missing or does not match the requested config."""


def manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "config"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, config: dict) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          config=ocp.args.JsonSave(config)))
  mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any, config: dict):
  """Restores the latest state, or returns None when the directory has no checkpoint.

  Raises CheckpointError when the saved config differs from `config` in any of `config`'s
  architecture fields (a resumed run must be the same model).
  """
  step = mngr.latest_step()
  if step is None:
    return None
  saved = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  check_same_model(saved, config, mngr.directory)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"]


def check_same_model(saved: dict, wanted: dict, where) -> None:
  saved_model, wanted_model = saved.get("model", {}), wanted.get("model", {})
  diff = {k: (saved_model.get(k), v) for k, v in wanted_model.items() if saved_model.get(k) != v}
  if diff:
    details = ", ".join(f"{k}: saved {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
    raise CheckpointError(f"checkpoint at {where} belongs to another model config ({details})")


def export(directory: str, params: Any, config: dict, overwrite: bool = False) -> None:
  """Writes `params` and `config` to a fresh directory (a model to ship or share)."""
  path = os.path.abspath(directory)
  if os.path.exists(path) and not overwrite:
    raise CheckpointError(f"{path} exists; pass overwrite=True to replace it")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(path, ocp.args.Composite(params=ocp.args.StandardSave(params),
                                        config=ocp.args.JsonSave(config)), force=overwrite)


def load_config(directory: str) -> dict:
  """The config saved with an exported model or with the latest step of a training directory."""
  path = _model_dir(directory)
  with open(os.path.join(path, "config", "metadata")) as f:
    return json.load(f)


def load_model(directory: str) -> tuple[Any, model_lib.GPTConfig, dict]:
  """Loads an exported model or the latest step of a training directory.

  Returns:
    (params, GPTConfig, the full config dict saved with it). The dict's "vocabulary" is always
    there: the stored one, or `tokenizer.DEFAULT`'s when none is stored;
    `tokenizer.Vocabulary.from_dict(config["vocabulary"])` gives the model's vocabulary.
  """
  path = _model_dir(directory)
  config = load_config(path)
  gpt_config = model_lib.GPTConfig(**config["model"])
  config.setdefault("vocabulary", tokenizer.DEFAULT.to_dict())
  try:
    vocabulary = tokenizer.Vocabulary.from_dict(config["vocabulary"])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"the vocabulary saved at {path} is unreadable: {e!r}") from None
  if len(vocabulary) != gpt_config.vocab_size:
    raise CheckpointError(f"the vocabulary saved at {path} has {len(vocabulary)} tokens, the "
                          f"model's vocab_size is {gpt_config.vocab_size}")
  # On this process's first device: with several processes each restores its own full copy
  # (Orbax refuses a target without shardings when the topology differs from the saved one).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      jax.eval_shape(lambda: model_lib.init_params(gpt_config, jax.random.key(0))))
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    if os.path.isdir(os.path.join(path, "params")):
      item = ckptr.restore(path, ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
      return item["params"], gpt_config, config
    state = {"params": abstract}
    restored = ckptr.restore(path, ocp.args.Composite(state=ocp.args.PyTreeRestore(
        state, restore_args=ocp.checkpoint_utils.construct_restore_args(state),
        partial_restore=True)))
    return restored["state"]["params"], gpt_config, config


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
