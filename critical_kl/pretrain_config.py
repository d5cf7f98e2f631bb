"""The pre-training hyper-parameters as one frozen, typed value, built and validated once at the
loop's entry (`PretrainConfig.from_config_dict`); critical_kl/configs/pretrain_default.py documents
every field. Below the entry, `pretrain` reads the typed fields only.
"""
import dataclasses

import ml_collections

from critical_kl import arithmetic
from critical_kl import model as model_lib
from critical_kl import tokenizer


def model_config(config: ml_collections.ConfigDict) -> model_lib.GPTConfig:
  """The GPTConfig of a run; block_size 0 means: fit a rollout on N + 3 digits."""
  fields = config.model.to_dict()
  if not fields["block_size"]:
    longest = config.pretrain_max_digits + 3
    needed = arithmetic.max_sequence_length(longest) + arithmetic.EPISODE_SLACK
    fields["block_size"] = -(-needed // 64) * 64
  return model_lib.GPTConfig(**fields)


def saved_config(config: ml_collections.ConfigDict) -> dict:
  """The config written beside checkpoints, with the resolved model fields and the vocabulary."""
  d = config.to_dict()
  d["model"] = dict(vars(model_config(config)))
  d["vocabulary"] = tokenizer.DEFAULT.to_dict()
  return d


# What the loss skips in a held-out row: the critical decisions only, or every completion token up
# to the end of the last line that holds one (`pretrain.held_out_mask`).
HELD_OUT_SCOPES = ("decisions", "lines")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """What pre-training reads; `model` is the resolved architecture (`model_config`)."""
  model: model_lib.GPTConfig
  seed: int
  pretrain_max_digits: int
  batch_size: int
  num_steps: int
  learning_rate: float
  warmup_steps: int
  min_learning_rate_ratio: float
  weight_decay: float
  grad_clip: float
  log_every: int
  checkpoint_every: int
  held_out_digits: int
  held_out_fraction: float
  random_start_positions: bool
  init_checkpoint: str
  eval_every: int
  eval_num_examples: int
  mesh_shape: tuple[int, int] = (1, 1)  # (data, params) devices; data 0: all devices // params
  ensemble_members: int = 0  # K > 0: K models at once, member k with seed + k (`pretrain`)
  held_out_scope: str = "decisions"  # what the loss skips in held-out rows (`pretrain`)

  def member(self, k: int) -> "PretrainConfig":
    """Member k of an ensemble alone: seed + k, no ensemble."""
    return dataclasses.replace(self, seed=self.seed + k, ensemble_members=0)

  @property
  def longest_operand(self) -> int:
    """Digits of the longest operand of a batch, held-out-decision problems included."""
    return self.pretrain_max_digits + self.held_out_digits

  @classmethod
  def from_config_dict(cls, config: ml_collections.ConfigDict) -> "PretrainConfig":
    """The typed config of `config`, validated (`validate`).

    Raises:
      ValueError: on settings that cannot run.
    """
    optional = ("model", "mesh_shape", "ensemble_members", "held_out_scope")
    names = [f.name for f in dataclasses.fields(cls) if f.name not in optional]
    sharding = config.get("sharding")
    typed = cls(model=model_config(config), **{name: config[name] for name in names},
                mesh_shape=(1, 1) if sharding is None else (sharding.data, sharding.params),
                ensemble_members=config.get("ensemble_members", 0),
                held_out_scope=config.get("held_out_scope", "decisions"))
    typed.validate()
    return typed

  def validate(self) -> None:
    """Raises ValueError on settings that cannot run."""
    if self.pretrain_max_digits < 1:
      raise ValueError(f"pretrain_max_digits must be >= 1, got {self.pretrain_max_digits}")
    for name in ("batch_size", "num_steps", "log_every", "checkpoint_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.learning_rate <= 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
    if self.ensemble_members < 0:
      raise ValueError(f"ensemble_members must be >= 0, got {self.ensemble_members}")
    if self.ensemble_members and self.mesh_shape != (1, 1):
      raise ValueError("an ensemble (ensemble_members > 0) trains on one device; set "
                       "sharding.data = sharding.params = 1")
    if self.held_out_digits < 0 or not 0 <= self.held_out_fraction <= 1:
      raise ValueError(f"held_out_digits must be >= 0 and held_out_fraction in [0, 1], got "
                       f"{self.held_out_digits} and {self.held_out_fraction}")
    if self.held_out_scope not in HELD_OUT_SCOPES:
      raise ValueError(f"held_out_scope must be one of {HELD_OUT_SCOPES}, got "
                       f"{self.held_out_scope!r}")
    needed = arithmetic.max_sequence_length(self.longest_operand)
    if self.model.block_size < needed:
      raise ValueError(f"block_size {self.model.block_size} cannot hold a "
                       f"{self.pretrain_max_digits}-digit problem ({needed} tokens)")
