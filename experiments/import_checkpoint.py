"""Imports one of the authors' pre-trained models (a local snapshot) as a critical_kl model.

  huggingface-cli download lecraquito/gpt2_reduced_vocab_FT_7digits \
      --local-dir=authors/gpt2_reduced_vocab_FT_7digits
  huggingface-cli download lecraquito/gpt2_reduced_vocab_FT_3digits --include="*.json" \
      --local-dir=authors/tokenizer
  python -m experiments.import_checkpoint --source=authors/gpt2_reduced_vocab_FT_7digits \
      --tokenizer=authors/tokenizer --export=runs/authors_n7
  python -m experiments.evaluate --checkpoint=runs/authors_n7 --num_examples=1000

The written directory loads like any exported model (`--checkpoint=` of every experiment, the RL
configs' `checkpoint` field). N is read from the name (`..._FT_7digits`) unless
--pretrain_max_digits gives it. A file that does not fit (a missing or misshapen weight, a bias-free
layout, a tokenizer without a character of the task) ends with one `error:` line naming it.
"""
from absl import flags

from critical_kl import model as model_lib
from critical_kl import nanogpt_import
from experiments import _cli

_SOURCE = flags.DEFINE_string("source", None, "Local snapshot of the authors' model: config.json "
                              "and model.safetensors (or pytorch_model.bin).", required=True)
_EXPORT = flags.DEFINE_string("export", None, "The critical_kl model directory to write.",
                              required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Directory of the tokenizer's tokenizer.json "
                                 "or vocab.json (default: --source).")
_PRETRAIN_MAX_DIGITS = flags.DEFINE_integer(
    "pretrain_max_digits", None, "N of the model's pre-training (default: from the name of "
    "--source, like ..._FT_7digits).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --export if it exists.")


def main(_):
  params, config = nanogpt_import.import_checkpoint(
      _SOURCE.value, _EXPORT.value, tokenizer_dir=_TOKENIZER.value,
      pretrain_max_digits=_PRETRAIN_MAX_DIGITS.value, overwrite=_OVERWRITE.value)
  gpt = config["model"]
  print(f"imported {config['imported_from']}: {gpt['n_layer']} layers, {gpt['n_head']} heads, "
        f"width {gpt['n_embd']}, block_size {gpt['block_size']}, "
        f"{model_lib.num_params(params) / 1e6:.2f}M parameters (value head freshly initialised), "
        f"{gpt['vocab_size']} tokens, pre-trained on 1..{config['pretrain_max_digits']} digits")
  print(f"wrote {_EXPORT.value}")


if __name__ == "__main__":
  _cli.run(main)
