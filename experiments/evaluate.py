"""Accuracy of a pre-trained model at N..N+3 digits, identical and varying operands (SPEC §3).

  python -m experiments.evaluate                      # the shipped model, 200 problems per suite
  python -m experiments.evaluate --num_examples=1000  # SPEC §3's 1,000 (several times longer)
  python -m experiments.evaluate --checkpoint=runs/pretrain --digits=4 --mode=varying \
      --num_examples=200 --decoding=sampled --temperature=1.0

Prints a table, then one line of JSON:
  {"pretrain_max_digits": N, "results": [{"digits": k, "mode": m, "num_examples": n,
   "accuracy": x, "ci95": [lo, hi]}, ...]}
"""
import json
import time

from absl import flags

from critical_kl import checkpoints
from critical_kl import evaluation
from critical_kl import tokenizer
from experiments import _cli

_CHECKPOINT = flags.DEFINE_string("checkpoint", checkpoints.DEFAULT_MODEL,
                                  "Exported model or training directory.")
_DIGITS = flags.DEFINE_list("digits", None, "Operand lengths to evaluate (default N..N+3).")
_MODE = flags.DEFINE_enum("mode", "both", ["identical", "varying", "both"], "Problem suite.")
# 200 keeps the default run to minutes on a 2-core CPU; the paper's tables use 1,000.
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 200, "Problems per suite.")
_DECODING = flags.DEFINE_enum("decoding", "greedy", ["greedy", "sampled"], "Decoding.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (sampled decoding).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the problems and of sampling.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 250, "Problems generated at once.")


def parse_digits(values, n_max: int) -> list[int]:
  if not values:
    return [n_max + k for k in range(4)]
  try:
    digits = [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--digits must be integers, got {','.join(values)}") from None
  if min(digits) < 1:
    raise ValueError(f"--digits must be >= 1, got {min(digits)}")
  return digits


def main(_):
  if _NUM_EXAMPLES.value < 1 or _BATCH_SIZE.value < 1:
    raise ValueError("--num_examples and --batch_size must be >= 1")
  if _TEMPERATURE.value <= 0:
    raise ValueError(f"--temperature must be > 0, got {_TEMPERATURE.value}")
  params, gpt, config = checkpoints.load_model(_CHECKPOINT.value)
  checkpoints.check_single(config, _CHECKPOINT.value)
  n_max = config["pretrain_max_digits"]
  vocabulary = tokenizer.Vocabulary.from_dict(config["vocabulary"])
  modes = evaluation.MODES if _MODE.value == "both" else (_MODE.value,)
  greedy = _DECODING.value == "greedy"
  print(f"model {_CHECKPOINT.value}: pre-trained on 1..{n_max} digits; {_DECODING.value} decoding"
        + ("" if greedy else f" at temperature {_TEMPERATURE.value}"))
  results, t0 = [], time.time()
  suites = [(digits, mode) for digits in parse_digits(_DIGITS.value, n_max) for mode in modes]
  for i, (digits, mode) in enumerate(suites):
    results.append(evaluation.evaluate_suite(
        params, gpt, digits, mode, _NUM_EXAMPLES.value, seed=_SEED.value, greedy=greedy,
        temperature=_TEMPERATURE.value, batch_size=_BATCH_SIZE.value, vocabulary=vocabulary))
    spent = time.time() - t0
    # Longer suites take longer: the estimate is a lower bound.
    print(f"  {i + 1}/{len(suites)} {digits} digits, {mode}: {100 * results[-1]['accuracy']:.1f}%"
          f"  {spent:.0f}s, ETA {spent / (i + 1) * (len(suites) - i - 1):.0f}s", flush=True)
  print(evaluation.format_table(results))
  print(json.dumps({"pretrain_max_digits": n_max, "results": results}))


if __name__ == "__main__":
  _cli.run(main)
