"""The RL hyper-parameters as one frozen, typed value, built and validated once at the loop's entry.

`RLConfig.from_config_dict` reads an `ml_collections.ConfigDict` (critical_kl/configs/rl_default.py
documents every field) and checks the SPEC §5 ranges; everything below the loop (the iteration, the
runs axis, the evaluation) reads the typed fields only, so no jitted function closes over a
ConfigDict. The arms (`arms.parse`) are the single source of the prioritized arms' β.
"""
import dataclasses

import ml_collections

from critical_kl import arms as arms_lib
from critical_kl import certainty as certainty_lib
from critical_kl import losses

# The policy objectives of `RLConfig.objective`.
OBJECTIVES = ("a2c", "ppo")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """What the RL code reads; `from_config_dict` gives the meaning of each field.

  Attributes:
    loss: the loss hyper-parameters (τ, α, c_v, c_e, ε, KL estimator and placement).
    objective: "a2c" or "ppo" (the config field `loss`).
    arms: the parsed arm list, β of the prioritized arms set.
    beta: β of the teacher-forced selectivity that gives the matched arm its α factor.
  """
  loss: losses.LossConfig
  objective: str
  arms: tuple[arms_lib.Arm, ...]
  beta: float
  checkpoint: str
  seed: int
  extra_digits: int
  num_seeds: int
  num_iterations: int
  episodes_per_collect: int
  num_minibatches: int
  learning_rate: float
  grad_clip: float
  failure_reward: float
  gamma: float
  lam: float
  normalize_advantages: bool
  intercept: float
  certainty_method: str
  certainty_temperature: float
  eval_episodes: int
  eval_chunk: int
  eval_every: int
  critical_eval_problems: int
  matched_problems: int
  checkpoint_every: int
  mesh_shape: tuple[int, int] = (1, 1)  # (data, params) devices; data 0: all devices // params
  # A reference ensemble (`pretrain`'s ensemble_members) for the "ensemble" arms, "" for none;
  # with `ensemble_epistemic` its certainty also subtracts the members' disagreement.
  reference_ensemble: str = ""
  ensemble_epistemic: bool = False
  # The runs' seeds are first_seed .. first_seed + num_seeds - 1: a seed's problems and keys depend
  # on it alone, so seeds run apart (in another workdir) stay paired with these.
  first_seed: int = 0

  @property
  def temperature(self) -> float:
    """τ of the sampling policy."""
    return self.loss.temperature

  @property
  def seeds(self) -> range:
    """The runs' seeds, the same for every arm."""
    return range(self.first_seed, self.first_seed + self.num_seeds)

  @classmethod
  def from_config_dict(cls, config: ml_collections.ConfigDict) -> "RLConfig":
    """The typed config of `config`, validated (`validate`).

    Raises:
      ValueError: on hyper-parameters that cannot run (SPEC §5 ranges) or a bad arm list.
    """
    loss = losses.LossConfig(
        estimator=config.estimator, kl_coef=config.kl_coef, value_coef=config.value_coef,
        entropy_coef=config.entropy_coef, temperature=config.temperature,
        clip_eps=config.clip_eps, use_kl=config.use_kl, kl_placement=config.kl_placement)
    sharding = config.get("sharding")
    typed = cls(
        loss=loss, objective=config.loss, arms=(), beta=config.beta, checkpoint=config.checkpoint,
        seed=config.seed, extra_digits=config.extra_digits, num_seeds=config.num_seeds,
        num_iterations=config.num_iterations, episodes_per_collect=config.episodes_per_collect,
        num_minibatches=config.num_minibatches, learning_rate=config.learning_rate,
        grad_clip=config.grad_clip, failure_reward=config.failure_reward, gamma=config.gamma,
        lam=config.lam, normalize_advantages=config.normalize_advantages,
        intercept=config.intercept, certainty_method=config.certainty_method,
        certainty_temperature=config.certainty_temperature, eval_episodes=config.eval_episodes,
        eval_chunk=config.get("eval_chunk", 0), eval_every=config.eval_every,
        critical_eval_problems=config.critical_eval_problems,
        matched_problems=config.matched_problems, checkpoint_every=config.checkpoint_every,
        mesh_shape=(1, 1) if sharding is None else (sharding.data, sharding.params),
        reference_ensemble=config.get("reference_ensemble", ""),
        ensemble_epistemic=config.get("ensemble_epistemic", False),
        first_seed=config.get("first_seed", 0))
    # The ranges first, then the arm list: a bad β is reported as out of range.
    typed.validate()
    arms = arms_lib.parse(config.arms, config.beta)
    if arms_lib.needs_ensemble(arms) and not typed.reference_ensemble:
      raise ValueError("an ensemble arm needs reference_ensemble: the directory of a reference "
                       "ensemble (python -m experiments.pretrain with ensemble_members > 0)")
    if typed.reference_ensemble and typed.mesh_shape != (1, 1):
      raise ValueError("a reference ensemble runs on one device; set sharding.data = "
                       "sharding.params = 1")
    return dataclasses.replace(typed, arms=arms)

  def validate(self) -> None:
    """Raises ValueError on hyper-parameters that cannot run (SPEC §5 ranges)."""
    losses.validate_loss_config(self.loss)
    if self.objective not in OBJECTIVES:
      raise ValueError(f"unknown loss {self.objective!r}; valid: {', '.join(OBJECTIVES)}")
    certainty_lib.check_method(self.certainty_method)
    checks = {"beta": self.beta >= 0, "intercept": self.intercept <= 0,
              "grad_clip": self.grad_clip >= 0,
              "certainty_temperature": self.certainty_temperature > 0,
              "learning_rate": self.learning_rate > 0, "extra_digits": self.extra_digits >= 1,
              "num_iterations": self.num_iterations >= 1, "num_seeds": self.num_seeds >= 1,
              "first_seed": self.first_seed >= 0,
              "eval_chunk": self.eval_chunk >= 0,
              "gamma": 0 <= self.gamma <= 1, "lam": 0 <= self.lam <= 1}
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
      raise ValueError("out of range: " + ", ".join(f"{n}={getattr(self, n)}" for n in bad))
    if self.episodes_per_collect % self.num_minibatches:
      raise ValueError(f"episodes_per_collect ({self.episodes_per_collect}) must be a multiple "
                       f"of num_minibatches ({self.num_minibatches})")
