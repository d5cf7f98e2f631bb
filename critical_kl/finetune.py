"""The host loop of RL fine-tuning: many runs at once, evaluation, JSON metrics, Orbax resume.

A run is (arm, seed). The arms are `config.arms` (see `arms`); every arm runs the same seeds, and
run s of every arm sees the same problems and starts from the same key. All runs advance together
through one jitted, vmapped iteration (`runs.make_runs_iteration`); with `config.sharding`, on a
device mesh (see `sharding`), where only the main process logs and writes `metrics.jsonl`.

`finetune` reads the ConfigDict once, into a typed `rl_config.RLConfig`; the pieces below it read
the typed config only. The loop is the only place with side effects: checkpoints, metrics, logs.
It stops at the first non-finite metric (`divergence.DivergenceError`), before any checkpoint of
non-finite parameters.
"""
import dataclasses
import json
import os
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from critical_kl import arithmetic
from critical_kl import arms as arms_lib
from critical_kl import checkpoints
from critical_kl import distributed
from critical_kl import divergence
from critical_kl import model as model_lib
from critical_kl import rl
from critical_kl import rl_config as rl_config_lib
from critical_kl import runs as runs_lib
from critical_kl import runs_evaluation
from critical_kl import selectivity
from critical_kl import sharding
from critical_kl import task as task_lib
from critical_kl import tokenizer

# The figures of the evaluations during training (`runs_evaluation.CURVE_FIGURES`).
CURVE_FIGURES = runs_evaluation.CURVE_FIGURES


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
  """What `finetune` returns.

  Attributes:
    arms: the arms, in the order of `config.arms`, with the matched arm's α factor set.
    runs: (arm name, seed) of every run, in the order of the stacked runs.
    before, after: figure name → one value per run, before and after RL
      (`runs_evaluation.Evaluator`).
    history: the per-iteration records of this call (those of `metrics.jsonl`).
    params: the stacked final parameters [R, ...].
    seconds: wall time of this call.
    task: the `task.Task`.
    reference: the teacher-forced selectivity of the reference's Ĵ^β at the config's β, τ_c and
      certainty method (`selectivity.teacher_forced_grid`), on `config.matched_problems` problems.
  """
  arms: tuple[arms_lib.Arm, ...]
  runs: list[tuple[str, int]]
  before: dict[str, list[float]]
  after: dict[str, list[float]]
  history: list[dict[str, Any]]
  params: Any
  seconds: float
  task: task_lib.Task
  reference: dict[str, Any]


def _per_run(metrics: dict[str, Any], runs) -> list[dict[str, Any]]:
  arrays = {k: np.asarray(v) for k, v in metrics.items()}
  return [dict(arm=arm, seed=seed, **{k: float(v[i]) for k, v in arrays.items()})
          for i, (arm, seed) in enumerate(runs)]


def _check_finite(record: dict) -> None:
  """Raises DivergenceError at the first run whose metrics hold a NaN or an infinity."""
  for run in record["runs"]:
    bad = divergence.first_non_finite((k, v) for k, v in run.items() if k not in ("arm", "seed"))
    if bad is not None:
      raise divergence.DivergenceError(
          f"iteration {record['iteration']}, run {run['arm']} seed {run['seed']}: {bad[0]} is "
          f"{bad[1]}; stopped before saving")


def _restart_log(path: str, iteration: int) -> None:
  """Keeps the metric lines of iterations ≤ `iteration` (a resumed run rewrites the rest); a last
  line cut short by a killed process is dropped."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.endswith("\n") and json.loads(l).get("iteration", 0) <= iteration]
  with open(path, "w") as f:
    f.writelines(lines)


def read_history(workdir: str) -> list[dict[str, Any]]:
  """The per-iteration records of `metrics.jsonl` (all iterations, also those before a resume)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def reference_selectivity(ref_params, gpt, config: rl_config_lib.RLConfig,
                          task: task_lib.Task, ensemble: bool = False) -> dict[str, Any]:
  """Teacher-forced selectivity of Ĵ^β (config β, τ_c, method) on fixed N + k problems; its
  `mean_weight` is the α factor of the matched arm. With `ensemble`, of a reference ensemble's
  mixture (`ref_params` its stacked members)."""
  rng = np.random.default_rng([config.seed, 2 * 10**6])
  operands = arithmetic.sample_rl(rng, config.matched_problems, task.n_max, config.extra_digits)
  return selectivity.teacher_forced_grid(
      ref_params, gpt, operands, task.n_max, methods=(config.certainty_method,),
      certainty_temperatures=(config.certainty_temperature,), betas=(config.beta,),
      vocabulary=task.vocabulary, ensemble=ensemble, epistemic=config.ensemble_epistemic)[0]


def _load_reference(config: rl_config_lib.RLConfig):
  """(reference parameters, GPTConfig, task) of the configured checkpoint.

  Raises:
    ValueError: when the model cannot hold an episode on N + k digits.
  """
  ref_params, gpt, pre_config = checkpoints.load_model(config.checkpoint)
  checkpoints.check_single(pre_config, f"checkpoint {config.checkpoint}")
  task = task_lib.make_task(pre_config["pretrain_max_digits"], config.extra_digits,
                            tokenizer.Vocabulary.from_dict(pre_config["vocabulary"]))
  if task.prompt_length + task.max_new_tokens > gpt.block_size:
    raise ValueError(f"episodes on {task.digits} digits need {task.prompt_length} + "
                     f"{task.max_new_tokens} positions; the model has {gpt.block_size}")
  return ref_params, gpt, task


def _load_ensemble(config: rl_config_lib.RLConfig, gpt: model_lib.GPTConfig):
  """The stacked members of `config.reference_ensemble`.

  Raises:
    CheckpointError: when it is no ensemble, or its members are not models like the reference.
  """
  members, members_gpt, saved = checkpoints.load_model(config.reference_ensemble)
  if not checkpoints.ensemble_members(saved):
    raise checkpoints.CheckpointError(f"reference_ensemble {config.reference_ensemble} is one "
                                      f"model, not an ensemble")
  if members_gpt != gpt:
    raise checkpoints.CheckpointError(f"reference_ensemble {config.reference_ensemble} holds "
                                      f"{members_gpt}, the reference is a {gpt}")
  return members


class _Runs(NamedTuple):
  """Every run of a job, before its first iteration."""
  arms: tuple[arms_lib.Arm, ...]  # the matched arm's α factor set
  runs: list[tuple[str, int]]  # (arm name, seed), in the order of the stacked runs
  run_arms: arms_lib.RunArms  # [R]
  state: rl.RLState  # [R, ...], on the mesh when there is one
  initial_params: Any  # [R, ...], on the host
  ref_params: Any  # on the mesh when there is one
  reference: dict[str, Any]  # `reference_selectivity`


def _prepare_runs(config: rl_config_lib.RLConfig, ref_params, gpt, task: task_lib.Task,
                  mesh) -> _Runs:
  """The runs' arms and initial stacked state: seed s starts from the key of s; an arm's
  learning rate lives in its optimizer state.

  Raises:
    ValueError: when the mesh cannot split the runs (checked before the workdir is touched).
  """
  reference = reference_selectivity(ref_params, gpt, config, task)
  arms = arms_lib.resolve_matched(config.arms, reference["mean_weight"])
  runs = [(arm.name, seed) for arm in arms for seed in config.seeds]
  by_name = {arm.name: arm for arm in arms}
  base_key = jax.random.key(config.seed)
  state = runs_lib.stack([rl.init_state(ref_params, config, jax.random.fold_in(base_key, seed),
                                        by_name[name].learning_rate) for name, seed in runs])
  initial_params = state.params
  if mesh is not None:
    state = sharding.place_runs(state, mesh, config.episodes_per_collect)
    ref_params = sharding.place_state(ref_params, mesh)
  return _Runs(arms, runs, arms_lib.run_arms([by_name[name] for name, _ in runs]), state,
               initial_params, ref_params, reference)


# The config fields a resumed workdir may change: how long it runs, how often it is evaluated or
# checkpointed, where the reference lives (the repository moved; its model fields are still
# compared) and the device mesh. Any other change (seeds, arms, a hyper-parameter) would continue
# runs trained under another config and label them with this one.
RESUMABLE_FIELDS = frozenset({"num_iterations", "eval_episodes", "eval_chunk", "eval_every",
                              "critical_eval_problems", "checkpoint_every", "checkpoint",
                              "sharding"})


def _open_workdir(workdir: str, overwrite: bool, state: rl.RLState, saved: dict,
                  resume_previous: bool, log):
  """The checkpoint manager, the metrics path, the state to start from and its iteration: the
  latest checkpoint's when there is one; the metric lines after it are dropped."""
  mngr = checkpoints.manager(checkpoints.prepare_workdir(workdir, overwrite))
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  main = distributed.is_main()
  if overwrite and os.path.exists(metrics_path) and main:
    os.remove(metrics_path)
  start = 0
  same = tuple(sorted(set(saved) - RESUMABLE_FIELDS))
  restored = checkpoints.restore_latest(mngr, dict(state=state._asdict(), iteration=0), saved,
                                        resume_previous, log, same_fields=same)
  if restored is not None:
    state, start = rl.RLState(**restored["state"]), int(restored["iteration"])
    log(f"resumed from iteration {start} in {mngr.directory}")
  if main:
    _restart_log(metrics_path, start)
  return mngr, metrics_path, state, start


def finetune(config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False,
             log=print, resume_previous: bool = False) -> FinetuneResult:
  """Runs RL fine-tuning for every (arm, seed); resumes from `workdir` when it holds a checkpoint.

  Raises:
    ValueError: on a bad config or arm list.
    checkpoints.CheckpointError: a missing, damaged or foreign checkpoint (with
      `resume_previous`, a damaged latest checkpoint is deleted and the one before restored).
    divergence.DivergenceError: at the first non-finite metric.
  """
  t0 = time.time()
  typed = rl_config_lib.RLConfig.from_config_dict(config)
  return _finetune(typed, config.to_dict(), workdir, overwrite, log, resume_previous, t0)


def _finetune(config: rl_config_lib.RLConfig, config_dict: dict, workdir: str, overwrite: bool,
              log, resume_previous: bool, t0: float) -> FinetuneResult:
  """`finetune` on the typed config; `config_dict` is written beside the checkpoints."""
  mesh = sharding.mesh_from_shape(*config.mesh_shape)
  if not distributed.is_main():
    log = lambda *_: None
  ref_params, gpt, task = _load_reference(config)
  job = _prepare_runs(config, ref_params, gpt, task, mesh)
  reference = job.reference
  if config.reference_ensemble:
    members = _load_ensemble(config, gpt)
    reference = dict(reference, ensemble=reference_selectivity(members, gpt, config, task, True))
    job = job._replace(ref_params=(job.ref_params, members), reference=reference)
  saved = dict(config_dict, model=dict(vars(gpt)),
               arms=[dataclasses.asdict(arm) for arm in job.arms])
  mngr, metrics_path, state, start = _open_workdir(workdir, overwrite, job.state, saved,
                                                   resume_previous, log)
  log(f"{len(job.runs)} runs ({', '.join(a.name for a in job.arms)} × seeds {config.seeds[0]}..{config.seeds[-1]}) "
      f"on {task.digits}-digit problems; reference Ĵ^β weights: "
      f"{reference['weight_critical']:.3f} on critical tokens, {reference['weight_other']:.3f} on "
      f"others, {100 * reference['reduction_share']:.1f}% of the reduction on critical tokens; "
      f"matched α factor {reference['mean_weight']:.4f}")
  if config.reference_ensemble:
    mixture = reference["ensemble"]
    log(f"reference ensemble {config.reference_ensemble}: Ĵ^β weights of the mixture "
        f"{mixture['weight_critical']:.3f} on critical tokens, {mixture['weight_other']:.3f} on "
        f"others, {100 * mixture['reduction_share']:.1f}% of the reduction on critical tokens")
  evaluator = runs_evaluation.Evaluator(gpt, config, task)
  # Every run starts from the same parameters: evaluate them once, not once per run.
  first = evaluator(jax.tree_util.tree_map(lambda x: x[:1], job.initial_params), "before RL", log)
  before = {k: v * len(job.runs) for k, v in first.items()}
  iterate = runs_lib.make_runs_iteration(gpt, config, task, state, mesh)
  state, history = _loop(config, task, job, iterate, evaluator, state, start,
                         (mngr, metrics_path, saved), log, t0)
  mngr.close()
  after = evaluator(distributed.host_local(state.params), "after RL", log)
  return FinetuneResult(arms=job.arms, runs=job.runs, before=before, after=after,
                        history=history, params=state.params, seconds=time.time() - t0,
                        task=task, reference=reference)


def _loop(config: rl_config_lib.RLConfig, task: task_lib.Task, job: _Runs, iterate, evaluator,
          state: rl.RLState, start: int, output, log, t0: float):
  """Iterations `start`..num_iterations: collect, iterate, check, log, checkpoint; `output` is
  (checkpoint manager, metrics path, saved config). Returns (state, this call's records)."""
  mngr, metrics_path, saved = output
  history = []
  for it in range(start, config.num_iterations):
    batches = runs_lib.stack([task_lib.collect_batch(task, config.episodes_per_collect,
                                                     config.seed, seed, it)
                              for _, seed in job.runs])
    state, metrics = iterate(state, job.run_arms, batches, job.ref_params)
    record = dict(iteration=it + 1, runs=_per_run(metrics, job.runs))
    _check_finite(record)
    if config.eval_every and (it + 1) % config.eval_every == 0 and it + 1 < config.num_iterations:
      record["eval"] = evaluator(distributed.host_local(state.params), f"at iteration {it + 1}",
                                 log, runs_evaluation.CURVE_FIGURES)
    history.append(record)
    if distributed.is_main():
      with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    _log_iteration(log, record, [arm.name for arm in job.arms],
                   (start, it + 1, config.num_iterations), t0)
    if (it + 1) % config.checkpoint_every == 0 or it + 1 == config.num_iterations:
      checkpoints.save(mngr, it + 1, dict(state=state._asdict(), iteration=it + 1), saved)
  return state, history


def _log_iteration(log, record, arms, progress: tuple[int, int, int], t0) -> None:
  """One line: each arm's training success and KL; progress = (first, done, total) iterations."""
  first, done, total = progress
  parts = []
  for arm in arms:
    rows = [r for r in record["runs"] if r["arm"] == arm]
    parts.append(f"{arm}: success {100 * np.mean([r['success'] for r in rows]):.1f}% "
                 f"kl {np.mean([r['kl_k2'] for r in rows]):.4f}")
  elapsed = time.time() - t0
  eta = elapsed / (done - first) * (total - done)
  log(f"iteration {done}/{total}  " + "  ".join(parts) + f"  {elapsed:.0f}s, ETA {eta:.0f}s")
