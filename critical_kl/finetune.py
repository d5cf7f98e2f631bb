"""The host loop of RL fine-tuning: many runs at once, evaluation, JSON metrics, Orbax resume.

A run is (arm, seed). The arms are `config.arms` (see `arms`); every arm runs the same seeds, and
run s of every arm sees the same problems and starts from the same key. All runs advance together
through one jitted, vmapped iteration (`runs.make_runs_iteration`); with `config.sharding`, on a
device mesh (see `sharding`), where only the main process logs and writes `metrics.jsonl`.

The loop is the only place with side effects: checkpoints, metrics, logs. It stops at the first
non-finite metric (`divergence.DivergenceError`), before any checkpoint of non-finite parameters.
"""
import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from critical_kl import arithmetic
from critical_kl import arms as arms_lib
from critical_kl import checkpoints
from critical_kl import distributed
from critical_kl import divergence
from critical_kl import rl
from critical_kl import runs as runs_lib
from critical_kl import sampling
from critical_kl import selectivity
from critical_kl import sharding
from critical_kl import tokenizer


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
  """What `finetune` returns.

  Attributes:
    arms: the arms, in the order of `config.arms`, with the matched arm's α factor set.
    runs: (arm name, seed) of every run, in the order of the stacked runs.
    before, after: figure name → one value per run, before and after RL (`Evaluator`).
    history: the per-iteration records of this call (those of `metrics.jsonl`).
    params: the stacked final parameters [R, ...].
    seconds: wall time of this call.
    task: the `rl.Task`.
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
  task: rl.Task
  reference: dict[str, Any]


def _eval_sets(config, task: rl.Task):
  """Fixed evaluation problems: N + k (the RL distribution) and in-distribution (1..N)."""
  rng = np.random.default_rng([config.seed, 10**6])
  rl_ops = arithmetic.sample_rl(rng, config.eval_episodes, task.n_max, config.extra_digits)
  in_ops = arithmetic.sample_in_distribution(rng, config.eval_episodes, task.n_max)
  teacher_ops = arithmetic.sample_rl(rng, config.critical_eval_problems, task.n_max,
                                     config.extra_digits)
  return (rl.make_batch(rl_ops, task).problems, rl.make_batch(in_ops, task).problems,
          rl.teacher_set(teacher_ops, task.n_max, task.vocabulary))


# What the learning curves draw (the paper's Figures 4 and 7): the only figures computed at the
# evaluations during training; before and after RL every figure is.
CURVE_FIGURES = ("sampled_accuracy", "critical_probability")


def _chunks(problems: sampling.Problems, size: int) -> list[sampling.Problems]:
  """`problems` cut into consecutive pieces of at most `size` problems."""
  count = problems.prompts.shape[0]
  return [jax.tree_util.tree_map(lambda x, i=i: x[i:i + size], problems)
          for i in range(0, count, size)]


class Evaluator:
  """Accuracy (greedy and sampled at τ) and critical-token probability of stacked parameters.

  The test problems are rolled out `config.eval_chunk` at a time (the KV cache of all runs × all
  problems may not fit in memory), chunk i > 0 with the key folded with i, so that a figure
  depends on the problems and the key alone, not on how many runs share the program.
  `__call__(params, label, log, names)` prints one line per figure with the time taken and an
  estimate of the time left, so that a long evaluation is not mistaken for a hang.
  """

  def __init__(self, gpt, config, task: rl.Task):
    rl_problems, in_problems, self.teacher = _eval_sets(config, task)
    size = config.eval_chunk or config.eval_episodes
    self.rl_chunks, self.in_chunks = _chunks(rl_problems, size), _chunks(in_problems, size)
    self.key = jax.random.key(config.seed + 1)
    greedy = runs_lib.make_runs_accuracy(gpt, task.max_new_tokens, config.temperature, True,
                                         task.vocabulary)
    sampled = runs_lib.make_runs_accuracy(gpt, task.max_new_tokens, config.temperature, False,
                                          task.vocabulary)
    critical = runs_lib.make_runs_critical_probability(gpt)
    self.figures = dict(
        sampled_accuracy=lambda p: self._accuracy(sampled, p, self.rl_chunks),
        accuracy=lambda p: self._accuracy(greedy, p, self.rl_chunks),
        in_distribution_accuracy=lambda p: self._accuracy(greedy, p, self.in_chunks),
        critical_probability=lambda p: critical(p, self.teacher))

  def _accuracy(self, accuracy, params, chunks) -> np.ndarray:
    """[R] share solved over all chunks, each chunk weighted by its number of problems."""
    # In float64, products and quotient are exact: one chunk gives its own figure, bit for bit.
    solved = [np.asarray(accuracy(params, chunk,
                                  self.key if i == 0 else jax.random.fold_in(self.key, i)),
                         np.float64) * chunk.prompts.shape[0] for i, chunk in enumerate(chunks)]
    return sum(solved) / sum(c.prompts.shape[0] for c in chunks)

  def __call__(self, params, label: str = "", log=lambda *_: None,
               names=None) -> dict[str, list[float]]:
    """Figure name → one value per run, for `names` (default: every figure)."""
    names = tuple(self.figures) if names is None else names
    out, t0 = {}, time.time()
    for i, name in enumerate(names):
      out[name] = np.asarray(self.figures[name](params)).tolist()
      spent = time.time() - t0
      left = spent / (i + 1) * (len(names) - i - 1)
      log(f"  evaluating{' ' + label if label else ''}: {i + 1}/{len(names)} {name} "
          f"(mean {np.mean(out[name]):.3f})  {spent:.0f}s, ETA {left:.0f}s")
    return out


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


def reference_selectivity(ref_params, gpt, config, task: rl.Task) -> dict[str, Any]:
  """Teacher-forced selectivity of Ĵ^β (config β, τ_c, method) on fixed N + k problems; its
  `mean_weight` is the α factor of the matched arm."""
  rng = np.random.default_rng([config.seed, 2 * 10**6])
  operands = arithmetic.sample_rl(rng, config.matched_problems, task.n_max, config.extra_digits)
  return selectivity.teacher_forced_grid(
      ref_params, gpt, operands, task.n_max, methods=(config.certainty_method,),
      certainty_temperatures=(config.certainty_temperature,), betas=(config.beta,),
      vocabulary=task.vocabulary)[0]


def _init_runs(ref_params, config, arms, runs):
  """The stacked state of every run: seed s starts from the key of s; an arm's learning rate
  lives in its optimizer state."""
  by_name = {arm.name: arm for arm in arms}
  base_key = jax.random.key(config.seed)
  return runs_lib.stack([rl.init_state(ref_params, config, jax.random.fold_in(base_key, seed),
                                       by_name[name].learning_rate) for name, seed in runs])


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
  rl.validate(config)
  arms = arms_lib.parse(config.arms, config.beta)
  mesh = sharding.mesh_from_config(config)
  if not distributed.is_main():
    log = lambda *_: None
  ref_params, gpt, pre_config = checkpoints.load_model(config.checkpoint)
  checkpoints.check_single(pre_config, f"checkpoint {config.checkpoint}")
  task = rl.make_task(pre_config["pretrain_max_digits"], config.extra_digits,
                      tokenizer.Vocabulary.from_dict(pre_config["vocabulary"]))
  if task.prompt_length + task.max_new_tokens > gpt.block_size:
    raise ValueError(f"episodes on {task.digits} digits need {task.prompt_length} + "
                     f"{task.max_new_tokens} positions; the model has {gpt.block_size}")
  reference = reference_selectivity(ref_params, gpt, config, task)
  arms = arms_lib.resolve_matched(arms, reference["mean_weight"])
  runs = [(arm.name, seed) for arm in arms for seed in range(config.num_seeds)]
  by_name = {arm.name: arm for arm in arms}
  run_arms = arms_lib.run_arms([by_name[name] for name, _ in runs])
  state = _init_runs(ref_params, config, arms, runs)
  initial_params, start = state.params, 0
  if mesh is not None:
    # Before the workdir is touched: raises ValueError when the mesh cannot split the runs.
    state = sharding.place_runs(state, mesh, config.episodes_per_collect)
    ref_params = sharding.place_state(ref_params, mesh)
  saved = dict(config.to_dict(), model=dict(vars(gpt)),
               arms=[dataclasses.asdict(arm) for arm in arms])
  mngr = checkpoints.manager(checkpoints.prepare_workdir(workdir, overwrite))
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  main = distributed.is_main()
  if overwrite and os.path.exists(metrics_path) and main:
    os.remove(metrics_path)
  restored = checkpoints.restore_latest(mngr, dict(state=state._asdict(), iteration=0), saved,
                                        resume_previous, log)
  if restored is not None:
    state, start = rl.RLState(**restored["state"]), int(restored["iteration"])
    log(f"resumed from iteration {start} in {mngr.directory}")
  if main:
    _restart_log(metrics_path, start)

  log(f"{len(runs)} runs ({', '.join(by_name)} × {config.num_seeds} seeds) on {task.digits}-digit "
      f"problems; reference Ĵ^β weights: {reference['weight_critical']:.3f} on critical tokens, "
      f"{reference['weight_other']:.3f} on others, {100 * reference['reduction_share']:.1f}% of "
      f"the reduction on critical tokens; matched α factor {reference['mean_weight']:.4f}")
  evaluator = Evaluator(gpt, config, task)
  # Every run starts from the same parameters: evaluate them once, not once per run.
  first = evaluator(jax.tree_util.tree_map(lambda x: x[:1], initial_params), "before RL", log)
  before = {k: v * len(runs) for k, v in first.items()}
  iterate = runs_lib.make_runs_iteration(gpt, config, task, state, mesh)
  history = []
  for it in range(start, config.num_iterations):
    batches = runs_lib.stack([rl.collect_batch(config, task, seed, it) for _, seed in runs])
    state, metrics = iterate(state, run_arms, batches, ref_params)
    record = dict(iteration=it + 1, runs=_per_run(metrics, runs))
    _check_finite(record)
    if config.eval_every and (it + 1) % config.eval_every == 0 and it + 1 < config.num_iterations:
      record["eval"] = evaluator(distributed.host_local(state.params), f"at iteration {it + 1}",
                                 log, CURVE_FIGURES)
    history.append(record)
    if main:
      with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    _log_iteration(log, record, by_name, (start, it + 1, config.num_iterations), t0)
    if (it + 1) % config.checkpoint_every == 0 or it + 1 == config.num_iterations:
      checkpoints.save(mngr, it + 1, dict(state=state._asdict(), iteration=it + 1), saved)
  mngr.close()
  after = evaluator(distributed.host_local(state.params), "after RL", log)
  return FinetuneResult(arms=arms, runs=runs, before=before, after=after, history=history,
                        params=state.params, seconds=time.time() - t0, task=task,
                        reference=reference)


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
