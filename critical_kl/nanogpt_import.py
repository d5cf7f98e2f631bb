"""The authors' pre-trained models as critical_kl model directories.

The authors published their pre-trained models (SPEC §3) on the Hugging Face hub, e.g.
`lecraquito/gpt2_reduced_vocab_FT_7digits`: the weights of the nanoGPT `GPT` of their code, saved
with huggingface_hub's `PyTorchModelHubMixin` (`config.json` and `model.safetensors`, or
`pytorch_model.bin` from older versions), and a byte-level Hugging Face tokenizer (`tokenizer.json`
or `vocab.json`, in `lecraquito/gpt2_reduced_vocab_FT_3digits`). `import_checkpoint` turns a local
snapshot into a model directory of `checkpoints.export` that keeps the authors' token ids, so
`model.forward` on their ids gives their logits. Their pre-trained models have no value head: ours
is freshly initialised (with key 0), as in their RL code.

The file formats are read without torch: safetensors reads to numpy. A `pytorch_model.bin` is a
pickle, which can run code when unpickled, so it is read only with torch installed and through
`torch.load(..., weights_only=True)`, which accepts tensors and nothing else.
"""
import json
import os
import pickle
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from critical_kl import checkpoints
from critical_kl import model as model_lib
from critical_kl import tokenizer

CheckpointError = checkpoints.CheckpointError

# [orig] The authors' RL code pads with "%" for these models (`tokenizer.pad_token = '%'`).
PAD_TOKEN = "%"
# Causal-mask buffers (nanoGPT without flash attention, Hugging Face GPT-2), not parameters.
_MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")
_EMBEDDING_NAMES = {"transformer.wte.weight", "lm_head.weight"}


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def read_config(path: str) -> dict:
  """The architecture in a `config.json` of Hugging Face GPT-2 form (`n_positions`) or nanoGPT form
  (`block_size`, `bias`).

  Returns:
    dict(vocab_size, block_size, n_layer, n_head, n_embd), ints.

  Raises:
    CheckpointError: naming a missing, non-integer or unsupported field.
  """
  if not os.path.isfile(path):
    raise CheckpointError(f"no config.json at {path}")
  raw = _read_json(path)
  if not isinstance(raw, dict):
    raise CheckpointError(f"{path} holds no JSON object")
  fields = dict(vocab_size=raw.get("vocab_size"), block_size=raw.get("block_size",
                                                                     raw.get("n_positions")),
                n_layer=raw.get("n_layer"), n_head=raw.get("n_head"), n_embd=raw.get("n_embd"))
  missing = [k if k != "block_size" else "block_size (or n_positions)"
             for k, v in fields.items() if v is None]
  if missing:
    raise CheckpointError(f"{path} lacks {', '.join(missing)}")
  wrong = [f"{k}={v!r}" for k, v in fields.items() if not isinstance(v, int) or v < 1]
  if wrong:
    raise CheckpointError(f"{path}: {', '.join(wrong)} must be positive integers")
  if raw.get("bias", True) is not True:
    raise CheckpointError(f"{path} describes a bias-free layout (bias: {raw['bias']!r}); "
                          "critical_kl's GPT has biases in every linear layer and LayerNorm")
  if raw.get("layer_norm_epsilon", 1e-5) != 1e-5:
    raise CheckpointError(f"{path}: layer_norm_epsilon {raw['layer_norm_epsilon']}, "
                          "critical_kl's GPT uses 1e-5")
  if raw.get("activation_function", _TANH_GELU[0]) not in _TANH_GELU:
    raise CheckpointError(f"{path}: activation_function {raw['activation_function']!r}, "
                          "critical_kl's GPT uses the tanh GELU (gelu_new)")
  return fields


def read_weights(directory: str) -> tuple[dict[str, np.ndarray], str]:
  """The tensors of `model.safetensors` (preferred) or `pytorch_model.bin`, as float32 numpy.

  Returns:
    ({name: array}, the path read).
  """
  path = os.path.join(directory, "model.safetensors")
  if os.path.isfile(path):
    try:
      tensors = safetensors.numpy.load_file(path)
    except (safetensors.SafetensorError, KeyError, OSError, ValueError) as e:
      raise CheckpointError(f"cannot read {path}: {e!r}") from None
    return {k: np.asarray(v, np.float32) for k, v in tensors.items()}, path
  path = os.path.join(directory, "pytorch_model.bin")
  if os.path.isfile(path):
    return _read_torch(path), path
  raise CheckpointError(f"no model.safetensors or pytorch_model.bin in {directory}")


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise CheckpointError(f"{path} is a PyTorch pickle: reading it needs torch (pip install "
                          "torch), or download the model's model.safetensors instead") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, OSError) as e:
    raise CheckpointError(f"cannot read {path} as tensors only: {e}") from None
  if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
    raise CheckpointError(f"{path} holds no dict of tensors")
  return {k: v.detach().float().numpy() for k, v in state.items()}


def _byte_decoder() -> dict[str, int]:
  """GPT-2's byte-level alphabet, inverted: the character that stands for each byte → the byte.

  Printable bytes stand for themselves; the others (controls, space, ...) are shifted to 256 + i,
  so that space is "Ġ" and newline "Ċ".
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  shifted = [b for b in range(256) if b not in printable]
  return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(shifted)}}


def _read_tokenizer(directory: str) -> tuple[dict[str, int], list[dict], bool, str]:
  """(vocab {token: id}, added tokens, whether byte-level, path) of `tokenizer.json` or, without
  one, `vocab.json` (GPT-2's byte-level form)."""
  path = os.path.join(directory, "tokenizer.json")
  if os.path.isfile(path):
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
      raise CheckpointError(f"{path} has no tokenizer model")
    byte_level = "ByteLevel" in json.dumps([data.get("decoder"), data.get("pre_tokenizer")])
    return data["model"].get("vocab"), data.get("added_tokens") or [], byte_level, path
  path = os.path.join(directory, "vocab.json")
  if not os.path.isfile(path):
    raise CheckpointError(f"no tokenizer.json or vocab.json in {directory} (the authors' "
                          "tokenizer is in lecraquito/gpt2_reduced_vocab_FT_3digits)")
  return _read_json(path), [], True, path


def _token_texts(directory: str) -> tuple[dict[int, str], set[int], str]:
  """({id: text}, ids of special tokens, path of the tokenizer file)."""
  vocab, added, byte_level, path = _read_tokenizer(directory)
  if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
    raise CheckpointError(f"{path} has no vocabulary of token → id")
  if len(set(vocab.values())) < len(vocab):
    raise CheckpointError(f"{path} gives several tokens the same id")
  decoder = _byte_decoder()
  texts = {}
  for raw, i in vocab.items():
    if byte_level and all(c in decoder for c in raw):
      # Latin-1 maps each byte to one character, so a one-byte token stays one character.
      texts[i] = bytes(decoder[c] for c in raw).decode("latin-1")
    else:
      texts[i] = raw
  try:
    # Added tokens are stored as their literal text, not in the byte-level alphabet.
    texts.update({t["id"]: t["content"] for t in added})
    special = {t["id"] for t in added if t.get("special")}
  except (KeyError, TypeError):
    raise CheckpointError(f"{path}: added_tokens need an id and a content") from None
  return texts, special, path


def read_vocabulary(directory: str, vocab_size: int) -> tokenizer.Vocabulary:
  """The vocabulary of a byte-level tokenizer, in its id order, padded to `vocab_size`.

  Ids the tokenizer does not use (nanoGPT may round vocab_size up) become special tokens
  `<unused{id}>`, so the model's logits keep their length.

  Raises:
    CheckpointError: when a token is not one character (critical_kl encodes one token per
      character), an id exceeds the model's vocabulary, a character of the task or the padding
      "%" is missing.
  """
  texts, special, path = _token_texts(directory)
  too_large = sorted(i for i in texts if not 0 <= i < vocab_size)
  if too_large:
    raise CheckpointError(f"{path} has token id {too_large[-1]}, outside the model's vocabulary "
                          f"of {vocab_size}")
  several = [(t, i) for i, t in sorted(texts.items()) if len(t) != 1 and i not in special]
  if several:
    text, i = several[0]
    raise CheckpointError(f"{path}: token {text!r} (id {i}) is not one character; critical_kl "
                          "encodes one token per character")
  tokens = tuple(texts.get(i, f"<unused{i}>") for i in range(vocab_size))
  missing = [c for c in tokenizer.CHARS if c not in tokens]
  if missing:
    raise CheckpointError(f"{path} lacks characters of the task: {''.join(missing)!r}")
  if PAD_TOKEN not in tokens:
    raise CheckpointError(f"{path} lacks {PAD_TOKEN!r}, the padding token of the authors' models")
  try:
    return tokenizer.Vocabulary(tokens, tokens.index(PAD_TOKEN))
  except ValueError as e:
    raise CheckpointError(f"{path}: {e}") from None


def _parameter_names(n_layer: int) -> list[tuple[str, tuple[str, ...]]]:
  """(nanoGPT name, path in our parameters) of every trunk parameter but the embedding."""
  names = [("transformer.wpe.weight", ("wpe", "embedding")),
           ("transformer.ln_f.weight", ("ln_f", "scale")),
           ("transformer.ln_f.bias", ("ln_f", "bias"))]
  for i in range(n_layer):
    theirs, ours = f"transformer.h.{i}.", f"h_{i}"
    for norm in ("ln_1", "ln_2"):
      names += [(f"{theirs}{norm}.weight", (ours, norm, "scale")),
                (f"{theirs}{norm}.bias", (ours, norm, "bias"))]
    for layer, path in (("attn.c_attn", ("attn", "c_attn")), ("attn.c_proj", ("attn", "c_proj")),
                        ("mlp.c_fc", ("c_fc",)), ("mlp.c_proj", ("mlp_proj",))):
      names += [(f"{theirs}{layer}.weight", (ours, *path, "kernel")),
                (f"{theirs}{layer}.bias", (ours, *path, "bias"))]
  return names


def _embedding(weights: dict[str, np.ndarray], where: str) -> np.ndarray:
  """The tied token embedding; PyTorchModelHubMixin's safetensors keep one of its two names."""
  wte, head = weights.get("transformer.wte.weight"), weights.get("lm_head.weight")
  if wte is None and head is None:
    raise CheckpointError(f"{where} lacks transformer.wte.weight (and lm_head.weight)")
  if wte is not None and head is not None and not np.array_equal(wte, head):
    raise CheckpointError(f"{where}: lm_head.weight differs from transformer.wte.weight; "
                          "critical_kl's GPT ties them")
  return wte if wte is not None else head


def to_params(weights: dict[str, np.ndarray], gpt: model_lib.GPTConfig, where: str):
  """Our parameters from nanoGPT-named tensors; the value head freshly initialised.

  The authors' nanoGPT stores its linear layers as `nn.Linear`, weight [out, in]; Hugging Face's
  GPT-2 as `Conv1D`, weight [in, out], under the same names. `attn.c_attn` ([3d, d] or [d, 3d])
  tells them apart; its fused q, k, v columns are in our order (q, then k, then v, head by head).

  Args:
    weights: {nanoGPT name: array}.
    gpt: the config the tensors must fit.
    where: the file they come from, for error messages.
  """
  weights = {k: v for k, v in weights.items() if not k.endswith(_MASK_BUFFERS)}
  names = _parameter_names(gpt.n_layer)
  missing = [name for name, _ in names if name not in weights]
  if missing and all(name.endswith(".bias") for name in missing):
    raise CheckpointError(f"{where} has a bias-free layout (no {missing[0]}, ...); critical_kl's "
                          "GPT has biases in every linear layer and LayerNorm")
  if missing:
    raise CheckpointError(f"{where} lacks {', '.join(missing[:3])}"
                          + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
  unknown = sorted(set(weights) - {name for name, _ in names} - _EMBEDDING_NAMES)
  if unknown:
    raise CheckpointError(f"{where} has weights critical_kl's GPT does not: "
                          f"{', '.join(unknown[:3])}")
  conv1d = weights["transformer.h.0.attn.c_attn.weight"].shape == (gpt.n_embd, 3 * gpt.n_embd)
  pairs = [("transformer.wte.weight", ("wte", "embedding"), _embedding(weights, where))]
  pairs += [(name, path, weights[name]) for name, path in names]
  params = jax.tree_util.tree_map(np.asarray, model_lib.init_params(gpt, jax.random.key(0)))
  for name, path, value in pairs:
    *parents, leaf = path
    slot = params
    for key in parents:
      slot = slot[key]
    transposed = not conv1d and leaf == "kernel"
    expected = slot[leaf].shape[::-1] if transposed else slot[leaf].shape
    if value.shape != expected:
      raise CheckpointError(f"{where}: {name} has shape {value.shape}, expected {expected}")
    slot[leaf] = value.T if transposed else value
  return jax.tree_util.tree_map(jnp.asarray, params)


def pretrain_max_digits_from_name(path: str) -> int | None:
  """N of a model named like the authors' (`gpt2_reduced_vocab_FT_7digits`, `..._FT_11digits_20k`,
  also inside a Hugging Face cache path)."""
  found = re.findall(r"FT_(\d+)digits", os.path.abspath(path))
  return int(found[-1]) if found else None


def import_checkpoint(source: str, export_dir: str, *, tokenizer_dir: str | None = None,
                      pretrain_max_digits: int | None = None, overwrite: bool = False):
  """Writes the model of the snapshot `source` as a critical_kl model directory `export_dir`.

  Args:
    source: a local snapshot of one of the authors' models (config.json and weights).
    export_dir: the model directory to write.
    tokenizer_dir: where `tokenizer.json` or `vocab.json` is; `source` if None.
    pretrain_max_digits: N of its pre-training; from the name of `source` if None.
    overwrite: replace `export_dir` if it exists.

  Returns:
    (params, the config saved with them: model, pretrain_max_digits, vocabulary, imported_from).
  """
  source = os.path.abspath(source)
  if not os.path.isdir(source):
    raise CheckpointError(f"no directory {source}")
  if os.path.exists(export_dir) and not overwrite:
    raise CheckpointError(f"{os.path.abspath(export_dir)} exists; pass overwrite=True to "
                          "replace it")
  if pretrain_max_digits is None:
    pretrain_max_digits = pretrain_max_digits_from_name(source)
    if pretrain_max_digits is None:
      raise CheckpointError(f"the name {source} does not say how many digits the model was "
                            "pre-trained on (like ..._FT_7digits); give pretrain_max_digits")
  if pretrain_max_digits < 1:
    raise ValueError(f"pretrain_max_digits must be >= 1, got {pretrain_max_digits}")
  fields = read_config(os.path.join(source, "config.json"))
  vocabulary = read_vocabulary(tokenizer_dir or source, fields["vocab_size"])
  gpt = model_lib.GPTConfig(**fields)
  weights, where = read_weights(source)
  params = to_params(weights, gpt, where)
  config = dict(model=dict(vars(gpt)), pretrain_max_digits=pretrain_max_digits,
                vocabulary=vocabulary.to_dict(), imported_from=source)
  checkpoints.export(export_dir, params, config, overwrite=overwrite)
  return params, config
