"""The typed configs: built once from a ConfigDict, validated there, frozen and hashable."""
import dataclasses
import importlib
import inspect
import pkgutil

import pytest

from critical_kl import arms
from critical_kl import certainty
from critical_kl import configs
from critical_kl import pretrain
from critical_kl import pretrain_config
from critical_kl import rl_config
from critical_kl.configs import pretrain_default
from critical_kl.configs import rl_default


def test_from_config_dict_round_trip():
  c = rl_default.get_config()
  c.update(arms="standard,prioritized,prioritized+beta=7", beta=20.0, estimator="k3",
           kl_coef=0.5, temperature=1.5, eval_chunk=3, learning_rate=2e-5)
  c.sharding.update(data=0, params=2)
  typed = rl_config.RLConfig.from_config_dict(c)
  skipped = {"loss", "objective", "arms", "mesh_shape"}
  for field in dataclasses.fields(typed):
    if field.name not in skipped:
      assert getattr(typed, field.name) == c[field.name], field.name
  for name in ("estimator", "kl_coef", "value_coef", "entropy_coef", "temperature", "clip_eps",
               "use_kl", "kl_placement"):
    assert getattr(typed.loss, name) == c[name], name
  assert typed.objective == c.loss and typed.temperature == 1.5
  assert typed.mesh_shape == (0, 2)
  # The arms are the single source of the prioritized arms' β.
  assert typed.arms == arms.parse(c.arms, c.beta)
  assert [arm.beta for arm in typed.arms] == [0.0, 20.0, 7.0]


def test_missing_optional_fields_take_their_defaults():
  c = rl_default.get_config()
  del c["eval_chunk"]
  del c["sharding"]
  typed = rl_config.RLConfig.from_config_dict(c)
  assert typed.eval_chunk == 0 and typed.mesh_shape == (1, 1)


def test_typed_configs_are_frozen_and_hashable():
  typed = rl_config.RLConfig.from_config_dict(rl_default.get_config())
  with pytest.raises(dataclasses.FrozenInstanceError):
    typed.gamma = 0.5
  assert hash(typed) == hash(rl_config.RLConfig.from_config_dict(rl_default.get_config()))
  pre = pretrain_config.PretrainConfig.from_config_dict(pretrain_default.get_config())
  with pytest.raises(dataclasses.FrozenInstanceError):
    pre.batch_size = 3
  assert hash(pre) is not None


@pytest.mark.parametrize("field,value,message", [
    ("estimator", "k9", "estimator"), ("certainty_method", "entropy", "certainty method"),
    ("beta", -1.0, "beta"), ("temperature", 0.0, "temperature"), ("intercept", 0.5, "intercept"),
    ("loss", "reinforce", "unknown loss 'reinforce'"), ("eval_chunk", -1, "eval_chunk=-1"),
    ("gamma", 1.5, "gamma"), ("lam", -0.1, "lam"), ("num_seeds", 0, "num_seeds"),
    ("first_seed", -1, "first_seed"),
    ("grad_clip", -1.0, "grad_clip"), ("learning_rate", 0.0, "learning_rate"),
    ("extra_digits", 0, "extra_digits"), ("certainty_temperature", 0.0, "certainty_temperature"),
    ("num_minibatches", 3, "multiple of num_minibatches"), ("arms", "standard,foo", "unknown arm"),
    ("kl_placement", "advantage", None)])
def test_validation(field, value, message):
  c = rl_default.get_config()
  c[field] = value
  if message is None:  # a valid setting
    assert getattr(rl_config.RLConfig.from_config_dict(c).loss, field) == value
    return
  with pytest.raises(ValueError, match=message):
    rl_config.RLConfig.from_config_dict(c)


def test_certainty_method_is_checked_in_one_place():
  certainty.check_method("max_prob")
  with pytest.raises(ValueError, match="unknown certainty method 'x'; valid names: negentropy"):
    certainty.check_method("x")


def test_pretrain_config_round_trip():
  c = pretrain_default.get_config()
  c.update(batch_size=6, held_out_digits=1)
  typed = pretrain_config.PretrainConfig.from_config_dict(c)
  assert typed.model == pretrain.model_config(c) and typed.model.block_size > 0
  assert typed.batch_size == 6 and typed.longest_operand == c.pretrain_max_digits + 1
  assert typed.mesh_shape == (1, 1)


@pytest.mark.parametrize("field,value,message", [
    ("pretrain_max_digits", 0, "pretrain_max_digits"), ("batch_size", 0, "batch_size"),
    ("learning_rate", 0.0, "learning_rate"), ("held_out_fraction", 2.0, "held_out_fraction"),
    ("model.block_size", 32, "block_size 32")])
def test_pretrain_validation(field, value, message):
  c = pretrain_default.get_config()
  if field.startswith("model."):
    c.model[field.split(".")[1]] = value
  else:
    c[field] = value
  with pytest.raises(ValueError, match=message):
    pretrain_config.PretrainConfig.from_config_dict(c)



def _argument_free_configs() -> list[str]:
  """Every config file whose `get_config` takes no argument (the paper-scale ones, with `:N`,
  have their own tests in test_paper_configs.py)."""
  names = [info.name for info in pkgutil.iter_modules(configs.__path__)]
  return [name for name in names
          if not inspect.signature(_config_module(name).get_config).parameters]


def _config_module(name: str):
  return importlib.import_module(f"critical_kl.configs.{name}")


@pytest.mark.parametrize("name", _argument_free_configs())
def test_every_config_file_builds_its_typed_config(name):
  """A pre-training config (it has `pretrain_max_digits`) or an RL config passes the validation
  of its loop's entry, so that a documented command does not stop on its config."""
  c = _config_module(name).get_config()
  if "pretrain_max_digits" in c:
    assert pretrain_config.PretrainConfig.from_config_dict(c).num_steps > 0
  else:
    assert rl_config.RLConfig.from_config_dict(c).arms
