"""Every config shipped in critical_kl/configs/ loads with its defaults and passes the typed
validation of its kind (RL configs have arms, pre-training configs a model)."""
import importlib
import pkgutil

import pytest

import critical_kl.configs
from critical_kl import pretrain_config
from critical_kl import rl_config

NAMES = sorted(m.name for m in pkgutil.iter_modules(critical_kl.configs.__path__))


@pytest.mark.parametrize("name", NAMES)
def test_shipped_config_validates(name):
  config = importlib.import_module(f"critical_kl.configs.{name}").get_config()
  if "arms" in config:
    rl_config.RLConfig.from_config_dict(config)
  else:
    assert "model" in config, name
    pretrain_config.PretrainConfig.from_config_dict(config)


def test_every_config_is_seen():
  assert {"rl_default", "pretrain_default", "prioritized_kl_full", "reference_deep"} <= set(NAMES)
