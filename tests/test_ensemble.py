"""Reference ensembles: K members pre-trained in one vmapped program, saved and loaded stacked,
and the RL arm whose reference is their mixture."""
import jax
import numpy as np
import pytest

from conftest import adam_atol, tiny_pretrain_config, tiny_rl_config  # tests/ on sys.path
from critical_kl import checkpoints
from critical_kl import finetune
from critical_kl import model as model_lib
from critical_kl import pretrain
from critical_kl import pretrain_config
from critical_kl import rl_config
from critical_kl.configs import ensemble_n5


def tiny_config(**overrides):
  return tiny_pretrain_config(**{"num_steps": 4, "log_every": 2, "checkpoint_every": 2,
                                 **overrides})


def test_members_are_the_models_trained_alone(tmp_path):
  """Member k of a K = 2 ensemble is the plain run of seed + k: own data, own initialization."""
  config = tiny_config(ensemble_members=2, seed=5)
  state = pretrain.train(config, str(tmp_path / "ensemble"), log=lambda _: None)
  assert jax.tree_util.tree_leaves(state["params"])[0].shape[0] == 2
  for k in range(2):
    alone = pretrain.train(tiny_config(seed=5 + k), str(tmp_path / f"alone{k}"),
                           log=lambda _: None)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=adam_atol(config.learning_rate, 4)),
        pretrain.member_params(state["params"], k), alone["params"])
  first, second = (jax.tree_util.tree_leaves(pretrain.member_params(state["params"], k))[0]
                   for k in (0, 1))
  assert not np.allclose(first, second)


def test_members_batches_differ_and_follow_the_member_seed():
  config = pretrain_config.PretrainConfig.from_config_dict(tiny_config(ensemble_members=3, seed=2))
  tokens, positions, mask = pretrain.make_members_batch(config, step=7)
  assert tokens.shape[0] == positions.shape[0] == mask.shape[0] == 3
  for k in range(3):
    alone = pretrain_config.PretrainConfig.from_config_dict(tiny_config(seed=2 + k))
    np.testing.assert_array_equal(tokens[k], pretrain.make_batch(alone, 7)[0])
  assert not np.array_equal(tokens[0], tokens[1])


def test_ensemble_resumes_and_exports_stacked(tmp_path):
  config = tiny_config(ensemble_members=2)
  workdir = str(tmp_path / "run")
  pretrain.train(tiny_config(ensemble_members=2, num_steps=2), workdir, log=lambda _: None)
  logs = []
  resumed = pretrain.train(config, workdir, log=logs.append)
  assert any("resumed from step 2" in line for line in logs)
  uninterrupted = pretrain.train(config, str(tmp_path / "once"), log=lambda _: None)
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed["params"],
                         uninterrupted["params"])
  path = str(tmp_path / "model")
  checkpoints.export(path, resumed["params"], pretrain.saved_config(config))
  params, gpt, saved = checkpoints.load_model(path)
  assert gpt == pretrain.model_config(config)
  assert checkpoints.ensemble_members(saved) == 2
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, resumed["params"])
  with pytest.raises(checkpoints.CheckpointError, match="ensemble of 2 models"):
    checkpoints.check_single(saved, path)
  with pytest.raises(checkpoints.CheckpointError, match="ensemble of 2 models"):
    pretrain.train(tiny_config(init_checkpoint=path), str(tmp_path / "from"), log=lambda _: None)


def test_bad_ensemble_settings_raise():
  with pytest.raises(ValueError, match="ensemble_members"):
    pretrain_config.PretrainConfig.from_config_dict(tiny_config(ensemble_members=-1))
  with pytest.raises(ValueError, match="one device"):
    pretrain_config.PretrainConfig.from_config_dict(tiny_config(ensemble_members=2,
                                                                sharding=dict(data=2, params=1)))


def test_ensemble_config_starts_from_the_shipped_model():
  config = ensemble_n5.get_config()
  assert config.init_checkpoint == checkpoints.DEFAULT_MODEL
  assert config.ensemble_members >= 2
  pretrain_config.PretrainConfig.from_config_dict(config)


def _export_ensemble(path, members, gpt) -> str:
  """Exports stacked members [K, ...] as an ensemble of N = 1 models."""
  stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *members)
  checkpoints.export(str(path), stacked, dict(model=dict(vars(gpt)), pretrain_max_digits=1,
                                              ensemble_members=len(members)))
  return str(path)


def _runs(out, arm):
  return [run for record in out.history for run in record["runs"] if run["arm"] == arm]


def test_ensemble_of_copies_is_the_prioritized_arm(tiny_model, tmp_path):
  """K copies of the reference: their mixture is the reference, so the ensemble arm's runs are
  the prioritized arm's, and the ensemble's teacher-forced selectivity is the reference's."""
  ref, gpt, _ = checkpoints.load_model(tiny_model)
  path = _export_ensemble(tmp_path / "copies", [ref, ref], gpt)
  out = finetune.finetune(tiny_rl_config(tiny_model, arms="prioritized,ensemble", beta=20.0,
                                         reference_ensemble=path),
                          str(tmp_path / "run"), log=lambda _: None)
  for mine, theirs in zip(_runs(out, "ensemble"), _runs(out, "prioritized"), strict=True):
    for name in ("loss", "kl_k2", "weight_mean", "certainty_mean", "episode_length"):
      np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-4, atol=1e-6, err_msg=name)
  jax.tree_util.tree_map(lambda x: np.testing.assert_allclose(x[1], x[0], atol=1e-5), out.params)
  for name in ("weight_critical", "weight_other", "mean_weight"):
    np.testing.assert_allclose(out.reference["ensemble"][name], out.reference[name], rtol=1e-5)


def test_distinct_members_change_the_ensemble_arm_alone(tiny_model, tmp_path):
  ref, gpt, _ = checkpoints.load_model(tiny_model)
  other = model_lib.init_params(gpt, jax.random.key(7))
  path = _export_ensemble(tmp_path / "distinct", [ref, other], gpt)
  config = lambda **o: tiny_rl_config(tiny_model, num_iterations=1, beta=20.0, **o)
  both = finetune.finetune(config(arms="prioritized,ensemble", reference_ensemble=path),
                           str(tmp_path / "both"), log=lambda _: None)
  alone = finetune.finetune(config(arms="prioritized"), str(tmp_path / "alone"),
                            log=lambda _: None)
  mixed, single = _runs(both, "ensemble")[0], _runs(both, "prioritized")[0]
  assert abs(mixed["kl_k2"] - single["kl_k2"]) > 1e-3 * abs(single["kl_k2"])
  for name in ("loss", "kl_k2", "weight_mean"):
    np.testing.assert_allclose(single[name], _runs(alone, "prioritized")[0][name], rtol=1e-5,
                               err_msg=name)


def test_ensemble_arm_needs_an_ensemble(tiny_model, tmp_path):
  with pytest.raises(ValueError, match="needs reference_ensemble"):
    rl_config.RLConfig.from_config_dict(tiny_rl_config(tiny_model, arms="ensemble"))
  with pytest.raises(checkpoints.CheckpointError, match="not an ensemble"):
    finetune.finetune(tiny_rl_config(tiny_model, arms="ensemble", reference_ensemble=tiny_model),
                      str(tmp_path / "run"), log=lambda _: None)
  ensemble = _export_ensemble(tmp_path / "ensemble", [checkpoints.load_model(tiny_model)[0]] * 2,
                              checkpoints.load_model(tiny_model)[1])
  with pytest.raises(checkpoints.CheckpointError, match="ensemble of 2 models"):
    finetune.finetune(tiny_rl_config(ensemble), str(tmp_path / "policy"), log=lambda _: None)
