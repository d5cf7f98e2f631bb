"""The host loop of RL fine-tuning: many runs at once, evaluation, JSON metrics, Orbax resume.

A run is (arm, seed). Arms are named β values (see `rl.run_beta`); every arm runs the same seeds,
and run s of every arm sees the same problems and starts from the same key. All runs advance
together through one jitted, vmapped iteration; with `config.sharding`, on a device mesh (see
`sharding.shard_runs_iteration`), where only the main process logs and writes `metrics.jsonl`.
"""
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from critical_kl import arithmetic
from critical_kl import checkpoints
from critical_kl import distributed
from critical_kl import pretrain
from critical_kl import rl
from critical_kl import sharding
from critical_kl import tokenizer


def _runs(arms: dict[str, float], num_seeds: int) -> list[tuple[str, int]]:
  return [(arm, seed) for arm in arms for seed in range(num_seeds)]


def _eval_sets(config, task: rl.Task):
  """Fixed evaluation problems: N + k (the RL distribution) and in-distribution (1..N)."""
  rng = np.random.default_rng([config.seed, 10**6])
  rl_ops = arithmetic.sample_rl(rng, config.eval_episodes, task.n_max, config.extra_digits)
  in_ops = arithmetic.sample_in_distribution(rng, config.eval_episodes, task.n_max)
  teacher_ops = arithmetic.sample_rl(rng, config.critical_eval_problems, task.n_max,
                                     config.extra_digits)
  return (rl.make_batch(rl_ops, task).problems, rl.make_batch(in_ops, task).problems,
          rl.teacher_set(teacher_ops, task.n_max, task.vocabulary))


class Evaluator:
  """Accuracy (greedy and sampled at τ) and critical-token probability of stacked parameters."""

  def __init__(self, gpt, config, task: rl.Task):
    self.rl_problems, self.in_problems, self.teacher = _eval_sets(config, task)
    self.key = jax.random.key(config.seed + 1)
    self.greedy = rl.make_runs_accuracy(gpt, task.max_new_tokens, config.temperature, True,
                                        task.vocabulary)
    self.sampled = rl.make_runs_accuracy(gpt, task.max_new_tokens, config.temperature, False,
                                         task.vocabulary)
    self.critical = rl.make_runs_critical_probability(gpt)

  def __call__(self, params) -> dict[str, list[float]]:
    figures = dict(accuracy=self.greedy(params, self.rl_problems, self.key),
                   sampled_accuracy=self.sampled(params, self.rl_problems, self.key),
                   in_distribution_accuracy=self.greedy(params, self.in_problems, self.key),
                   critical_probability=self.critical(params, self.teacher))
    return {k: np.asarray(v).tolist() for k, v in figures.items()}


def _per_run(metrics: dict[str, Any], runs) -> list[dict[str, Any]]:
  arrays = {k: np.asarray(v) for k, v in metrics.items()}
  return [dict(arm=arm, seed=seed, **{k: float(v[i]) for k, v in arrays.items()})
          for i, (arm, seed) in enumerate(runs)]


def _restart_log(path: str, iteration: int) -> None:
  """Keeps the metric lines of iterations ≤ `iteration` (a resumed run rewrites the rest)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if json.loads(l).get("iteration", 0) <= iteration]
  with open(path, "w") as f:
    f.writelines(lines)


def read_history(workdir: str) -> list[dict[str, Any]]:
  """The per-iteration records of `metrics.jsonl` (all iterations, also those before a resume)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def finetune(config: ml_collections.ConfigDict, workdir: str, arms: dict[str, float],
             overwrite: bool = False, log=print) -> dict[str, Any]:
  """Runs RL fine-tuning for every (arm, seed); resumes from `workdir` when it holds a checkpoint.

  Returns:
    dict(runs=[(arm, seed)], before=..., after=..., history=[per-iteration metrics per run],
    params=stacked final parameters, seconds=wall time of this call).
  """
  t0 = time.time()
  rl.validate(config)
  mesh = sharding.mesh_from_config(config)
  if not distributed.is_main():
    log = lambda *_: None
  ref_params, gpt, pre_config = checkpoints.load_model(config.checkpoint)
  task = rl.make_task(pre_config["pretrain_max_digits"], config.extra_digits,
                      tokenizer.Vocabulary.from_dict(pre_config["vocabulary"]))
  if task.prompt_length + task.max_new_tokens > gpt.block_size:
    raise ValueError(f"episodes on {task.digits} digits need {task.prompt_length} + "
                     f"{task.max_new_tokens} positions; the model has {gpt.block_size}")
  runs = _runs(arms, config.num_seeds)
  betas = jnp.array([arms[arm] for arm, _ in runs], jnp.float32)
  base_key = jax.random.key(config.seed)
  state = rl.stack([rl.init_state(ref_params, config, jax.random.fold_in(base_key, seed))
                    for _, seed in runs])
  initial_params, start = state.params, 0
  if mesh is not None:
    # Before the workdir is touched: raises ValueError when the mesh cannot split the runs.
    state = sharding.place_runs(state, mesh, config.episodes_per_collect)
    ref_params = sharding.place_state(ref_params, mesh)
  saved = dict(config.to_dict(), model=dict(vars(gpt)), arms=arms)
  mngr = checkpoints.manager(pretrain.prepare_workdir(workdir, overwrite))
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  main = distributed.is_main()
  if overwrite and os.path.exists(metrics_path) and main:
    os.remove(metrics_path)
  restored = checkpoints.restore_latest(mngr, dict(state=state._asdict(), iteration=0), saved)
  if restored is not None:
    state, start = rl.RLState(**restored["state"]), int(restored["iteration"])
    log(f"resumed from iteration {start} in {mngr.directory}")
  if main:
    _restart_log(metrics_path, start)

  evaluator = Evaluator(gpt, config, task)
  # Every run starts from the same parameters: evaluate them once, not once per run.
  first = evaluator(jax.tree_util.tree_map(lambda x: x[:1], initial_params))
  before = {k: v * len(runs) for k, v in first.items()}
  log(f"{len(runs)} runs ({', '.join(arms)} × {config.num_seeds} seeds) on {task.digits}-digit "
      f"problems; before RL: greedy {100 * before['accuracy'][0]:.1f}%, sampled at "
      f"τ={config.temperature} {100 * before['sampled_accuracy'][0]:.1f}%")
  iterate = (rl.make_runs_iteration(gpt, config, task) if mesh is None
             else sharding.shard_runs_iteration(gpt, config, task, state, mesh))
  history = []
  for it in range(start, config.num_iterations):
    batches = rl.stack([rl.collect_batch(config, task, seed, it) for _, seed in runs])
    state, metrics = iterate(state, betas, batches.problems, batches.critical, ref_params)
    record = dict(iteration=it + 1, runs=_per_run(metrics, runs))
    if config.eval_every and (it + 1) % config.eval_every == 0 and it + 1 < config.num_iterations:
      record["eval"] = evaluator(distributed.host_local(state.params))
    history.append(record)
    if main:
      with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    _log_iteration(log, record, arms, it + 1, config.num_iterations, t0)
    if (it + 1) % config.checkpoint_every == 0 or it + 1 == config.num_iterations:
      checkpoints.save(mngr, it + 1, dict(state=state._asdict(), iteration=it + 1), saved)
  mngr.close()
  after = evaluator(distributed.host_local(state.params))
  return dict(runs=runs, before=before, after=after, history=history, params=state.params,
              seconds=time.time() - t0, task=task)


def _log_iteration(log, record, arms, done, total, t0) -> None:
  parts = []
  for arm in arms:
    rows = [r for r in record["runs"] if r["arm"] == arm]
    parts.append(f"{arm}: success {100 * np.mean([r['success'] for r in rows]):.1f}% "
                 f"kl {np.mean([r['kl_k2'] for r in rows]):.4f}")
  log(f"iteration {done}/{total}  " + "  ".join(parts) + f"  {time.time() - t0:.0f}s")
