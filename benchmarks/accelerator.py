"""The paper's 85M model on one accelerator, in float32 and bfloat16: pre-training and RL-iteration
tokens/s against the device's matmul peak in the same dtype, measured in the same run, as JSON.

  python -m benchmarks.accelerator                 # one GPU or TPU chip: a few minutes, compiles included
  python -m benchmarks.accelerator --json=/tmp/accelerator.json
  python -m benchmarks.accelerator --smoke         # tiny sizes on any device (a CPU too): checks it runs

For each dtype (the model config's `dtype`: the computation's; parameters and optimizer state stay
float32) it measures the peak of a jitted square matmul in that dtype, one pre-training step
(`benchmarks.pretrain.measure_pretrain`: 1..3-digit addition, 242-token sequences) and one RL
iteration (`benchmarks.rl.benchmark_rl`: rollout, reference pass and update over 389-token
episodes), each as tokens/s and as the fraction of that peak. The final line is one JSON object:
device, cpu_count, model, and dtypes: {dtype: {matmul_peak_gflops_per_s, pretrain_tokens_per_s,
pretrain_peak_fraction, rl_tokens_per_s, rl_peak_fraction, ...}}.
"""
import functools
import time

from absl import flags

from critical_kl import model as model_lib
from benchmarks import common
from benchmarks import pretrain
from benchmarks import rl
from experiments import _cli

DTYPES = ("float32", "bfloat16")
# Sizes on an accelerator, and at --smoke (the RL benchmark's tiny model and task).
FULL = dict(model=model_lib.PAPER_85M, pretrain_batch=32, rl_batch=64, matmul=8192,
            max_digits=None, reps=3)
SMOKE = dict(model=rl.SMOKE["model"], pretrain_batch=2, rl_batch=2, matmul=256,
             max_digits=rl.SMOKE["max_digits"], reps=1)


def measure_dtype(sizes: dict, dtype: str, log=print) -> dict:
  """The figures of one computation dtype (see the module docstring)."""
  model = dict(sizes["model"], dtype=dtype)
  peak = common.measure_matmul_peak(sizes["matmul"], dtype=dtype)
  log(f"{dtype}: matmul peak {peak:,.0f} GFLOP/s; pre-training step")
  config = common.task_config(model, sizes["pretrain_batch"])
  if sizes["max_digits"]:
    config.pretrain_max_digits = sizes["max_digits"]
  train = pretrain.measure_pretrain(config, sizes["reps"])
  log(f"{dtype}: {train['train_tokens_per_s']:,.0f} pre-training tokens/s; RL iteration")
  gpt, rl_config, task = rl.rl_setup(model, sizes["rl_batch"], sizes["max_digits"])
  iteration = rl.benchmark_rl(gpt, rl_config, task, peak_gflops=peak, reps=sizes["reps"],
                              log=log)
  log(f"{dtype}: {iteration['tokens_per_s']:,.0f} RL tokens/s")
  return dict(matmul_peak_gflops_per_s=peak,
              pretrain_tokens_per_s=train["train_tokens_per_s"],
              pretrain_gflops_per_s=train["train_gflops_per_s"],
              pretrain_peak_fraction=train["train_gflops_per_s"] / peak,
              pretrain_batch=train["train_batch"], pretrain_length=train["train_length"],
              rl_tokens_per_s=iteration["tokens_per_s"],
              rl_gflops_per_s=iteration["gflops_per_s"],
              rl_peak_fraction=iteration["peak_fraction"], rl_episodes=iteration["episodes"],
              rl_episode_length=iteration["episode_length"],
              rl_rollout_s=iteration["rollout_s"], rl_update_s=iteration["update_s"],
              parameters=iteration["parameters"])


def report(results: dict[str, dict]) -> str:
  rows = (("matmul peak GFLOP/s", "{matmul_peak_gflops_per_s:,.0f}"),
          ("pre-train tokens/s", "{pretrain_tokens_per_s:,.0f}"),
          ("  fraction of peak", "{pretrain_peak_fraction:.1%}"),
          ("RL iteration tokens/s", "{rl_tokens_per_s:,.1f}"),
          ("  fraction of peak", "{rl_peak_fraction:.1%}"))
  return "\n".join(common.table(rows, results))


def main(flag_holders: dict, argv):
  del argv
  smoke = flag_holders["smoke"].value
  dtypes = flag_holders["dtypes"].value
  unknown = set(dtypes) - set(DTYPES)
  if unknown or not dtypes:
    raise ValueError(f"--dtypes: choose from {list(DTYPES)}, got {dtypes}")
  sizes = SMOKE if smoke else FULL
  figures = common.device_figures()
  print(f"device: {figures['device']}, {figures['cpu_count']} CPU cores", flush=True)
  start = time.time()
  results = {dtype: measure_dtype(sizes, dtype, functools.partial(print, flush=True))
             for dtype in dtypes}
  print(report(results))
  common.write_json(dict(figures, model="smoke" if smoke else "paper85m", dtypes=results,
                         seconds=round(time.time() - start, 1)), flag_holders["json"].value)


def _define_flags() -> dict:
  return dict(
      smoke=flags.DEFINE_bool("smoke", False, f"Tiny sizes ({SMOKE['model']}) instead of the "
                              "85M model's, to check that the command runs; figures mean nothing."),
      dtypes=flags.DEFINE_list("dtypes", list(DTYPES), f"Computation dtypes, from {DTYPES}."),
      json=flags.DEFINE_string("json", None, "Also write the figures to this JSON file."))


if __name__ == "__main__":
  _cli.run(functools.partial(main, _define_flags()))
