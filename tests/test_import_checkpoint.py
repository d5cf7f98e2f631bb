"""Importing the authors' nanoGPT checkpoints, offline: a small random model in their layout.

The snapshot has what the authors' Hugging Face repositories hold: `config.json` (nanoGPT form, or
Hugging Face GPT-2 form), `model.safetensors` with nanoGPT names (nn.Linear weights [out, in], the
tied embedding stored once, as PyTorchModelHubMixin does), and a byte-level `tokenizer.json` whose
characters are in a shuffled order, with an extra special token. The reference forward pass below is
plain numpy over those tensors, written from the nanoGPT model, not from ours.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from critical_kl import arithmetic
from critical_kl import checkpoints
from critical_kl import evaluation
from critical_kl import finetune
from critical_kl import model as model_lib
from critical_kl import nanogpt_import
from critical_kl import sampling
from critical_kl import task as task_lib
from critical_kl import tokenizer
from critical_kl import trajectory as trajectory_lib
from critical_kl.configs import rl_default

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
N_LAYER, N_HEAD, N_EMBD, BLOCK = 2, 2, 16, 288
EOT = "<|endoftext|>"
VOCAB_SIZE = 45  # 43 tokens and 2 ids the tokenizer leaves unused
LINEAR = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte → character table (openai/gpt-2 encoder.py)."""
  bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1)]
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {b: chr(c) for b, c in zip(bs, cs)}


def their_tokens(seed: int = 0) -> list[str]:
  """The characters of the task, "%" and "x" in a shuffled order, an end token at id 17."""
  chars = list(tokenizer.CHARS) + ["%", "x"]
  np.random.default_rng(seed).shuffle(chars)
  return chars[:17] + [EOT] + chars[17:]


def their_tensors(seed: int = 0) -> dict[str, np.ndarray]:
  """Random nanoGPT weights: nn.Linear [out, in], LayerNorm weight and bias, tied embedding."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.normal(0.0, 0.3, shape).astype(np.float32)
  d = N_EMBD
  tensors = {"lm_head.weight": normal(VOCAB_SIZE, d), "transformer.wpe.weight": normal(BLOCK, d),
             "transformer.ln_f.weight": 1 + normal(d), "transformer.ln_f.bias": normal(d)}
  for i in range(N_LAYER):
    p = f"transformer.h.{i}."
    for norm in ("ln_1", "ln_2"):
      tensors[p + norm + ".weight"], tensors[p + norm + ".bias"] = 1 + normal(d), normal(d)
    for name, (out, inp) in zip(LINEAR, [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)]):
      tensors[p + name + ".weight"], tensors[p + name + ".bias"] = normal(out, inp), normal(out)
  return tensors


def write_snapshot(directory, tensors, tokens, *, config_form="nanogpt", conv1d=False):
  """Writes config.json, model.safetensors and tokenizer.json in the authors' layout."""
  os.makedirs(directory, exist_ok=True)
  if config_form == "nanogpt":
    config = dict(block_size=BLOCK, vocab_size=VOCAB_SIZE, n_layer=N_LAYER, n_head=N_HEAD,
                  n_embd=N_EMBD, dropout=0.0, bias=True, use_flash=True)
  else:
    config = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_positions=BLOCK,
                  n_ctx=BLOCK, vocab_size=VOCAB_SIZE, n_layer=N_LAYER, n_head=N_HEAD,
                  n_embd=N_EMBD, layer_norm_epsilon=1e-5, activation_function="gelu_new")
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  if conv1d:  # Hugging Face GPT-2 stores the same layers as Conv1D, weight [in, out].
    tensors = {k: v.T.copy() if k.endswith(tuple(n + ".weight" for n in LINEAR)) else v
               for k, v in tensors.items()}
  safetensors.numpy.save_file(tensors, os.path.join(directory, "model.safetensors"))
  byte = _bytes_to_unicode()
  vocab = {(t if t == EOT else "".join(byte[b] for b in t.encode())): i
           for i, t in enumerate(tokens)}
  data = {"version": "1.0", "truncation": None, "padding": None,
          "added_tokens": [{"id": tokens.index(EOT), "content": EOT, "single_word": False,
                            "lstrip": False, "rstrip": False, "normalized": False,
                            "special": True}],
          "normalizer": None,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
          "post_processor": None, "decoder": {"type": "ByteLevel"},
          "model": {"type": "BPE", "dropout": None, "unk_token": None, "vocab": vocab,
                    "merges": []}}
  with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
    json.dump(data, f, ensure_ascii=False)


def numpy_forward(tensors, ids: np.ndarray) -> np.ndarray:
  """Logits [B, T, V] of the nanoGPT GPT (no dropout) on ids [B, T], in float64 numpy."""
  w = {k: v.astype(np.float64) for k, v in tensors.items()}
  linear = lambda x, name: x @ w[name + ".weight"].T + w[name + ".bias"]

  def layer_norm(x, name):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * w[name + ".weight"] + w[name + ".bias"]

  def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))

  batch, length = ids.shape
  head = N_EMBD // N_HEAD
  x = w["lm_head.weight"][ids] + w["transformer.wpe.weight"][np.arange(length)]
  future = np.triu(np.ones((length, length), bool), k=1)
  for i in range(N_LAYER):
    p = f"transformer.h.{i}."
    q, k, v = np.split(linear(layer_norm(x, p + "ln_1"), p + "attn.c_attn"), 3, axis=-1)
    q, k, v = (a.reshape(batch, length, N_HEAD, head).transpose(0, 2, 1, 3) for a in (q, k, v))
    att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head)
    att = np.where(future, -np.inf, att)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    y = (att @ v).transpose(0, 2, 1, 3).reshape(batch, length, N_EMBD)
    x = x + linear(y, p + "attn.c_proj")
    x = x + linear(gelu(linear(layer_norm(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
  return layer_norm(x, "transformer.ln_f") @ w["lm_head.weight"].T


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("hub") / "gpt2_reduced_vocab_FT_1digits")
  write_snapshot(directory, their_tensors(), their_tokens())
  return directory


@pytest.fixture(scope="module")
def imported(snapshot, tmp_path_factory):
  """(params, GPTConfig, vocabulary) of the snapshot, imported and loaded back."""
  directory = str(tmp_path_factory.mktemp("imported") / "model")
  nanogpt_import.import_checkpoint(snapshot, directory)
  params, gpt, saved = checkpoints.load_model(directory)
  assert saved["pretrain_max_digits"] == 1  # from the name, ..._FT_1digits
  return params, gpt, tokenizer.Vocabulary.from_dict(saved["vocabulary"]), directory


def test_vocabulary_keeps_their_ids(imported):
  _, gpt, vocabulary, _ = imported
  tokens = their_tokens()
  assert gpt.vocab_size == len(vocabulary) == VOCAB_SIZE
  assert vocabulary.tokens[:len(tokens)] == tuple(tokens)  # "Ġ" and "Ċ" read as space and newline
  assert vocabulary.pad_id == tokens.index("%")
  assert vocabulary.end_ids == tuple(sorted([tokens.index("%"), tokens.index(EOT), 43, 44]))
  text = arithmetic.prompt(57, 8) + arithmetic.scratchpad(57, 8)
  assert vocabulary.encode(text).tolist() == [tokens.index(c) for c in text]
  assert vocabulary.token_id("\n") != tokenizer.NEWLINE_ID  # the test means something
  assert vocabulary.decode(vocabulary.encode(text)) == text


@pytest.mark.parametrize("config_form, conv1d", [("nanogpt", False), ("hf", True)])
def test_logits_equal_a_numpy_nanogpt_forward(tmp_path, config_form, conv1d):
  tensors = their_tensors(seed=1)
  source = str(tmp_path / "gpt2_reduced_vocab_FT_3digits")
  stored = dict(tensors)
  if config_form == "hf":  # the embedding under its other name
    stored["transformer.wte.weight"] = stored.pop("lm_head.weight")
  else:  # nanoGPT without flash attention keeps its causal mask in the state dict
    mask = np.tril(np.ones((BLOCK, BLOCK), np.float32))[None, None]
    stored.update({f"transformer.h.{i}.attn.bias": mask for i in range(N_LAYER)})
  write_snapshot(source, stored, their_tokens(seed=1), config_form=config_form, conv1d=conv1d)
  params, config = nanogpt_import.import_checkpoint(source, str(tmp_path / "model"))
  assert config["pretrain_max_digits"] == 3 and config["imported_from"] == source
  gpt = model_lib.GPTConfig(**config["model"])
  ids = np.random.default_rng(0).integers(0, VOCAB_SIZE, size=(3, 40))
  ours = np.asarray(model_lib.forward(params, gpt, jnp.asarray(ids)).logits)
  theirs = numpy_forward(tensors, ids)
  assert np.abs(theirs).max() > 1.0  # not a trivially small output
  np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)
  # The value head is freshly initialised; its output has the right shape.
  assert model_lib.forward(params, gpt, jnp.asarray(ids)).values.shape == (3, 40)


def test_imported_directory_loads_to_the_same_logits(imported, snapshot):
  params, gpt, vocabulary, _ = imported
  ids = vocabulary.encode(arithmetic.prompt(5, 7))[None]
  ours = np.asarray(model_lib.forward(params, gpt, jnp.asarray(ids)).logits)
  np.testing.assert_allclose(ours, numpy_forward(their_tensors(), ids), atol=2e-4, rtol=1e-4)


def test_load_model_checks_the_stored_vocabulary(imported, tmp_path):
  params, gpt, _, _ = imported
  config = dict(model=dict(vars(gpt)), pretrain_max_digits=1,
                vocabulary=tokenizer.DEFAULT.to_dict())
  checkpoints.export(str(tmp_path / "model"), params, config)
  with pytest.raises(checkpoints.CheckpointError,
                     match="has 41 tokens, the model's vocab_size is 45"):
    checkpoints.load_model(str(tmp_path / "model"))
  # The shipped model stores no vocabulary: it keeps the default table.
  _, shipped, saved = checkpoints.load_model(checkpoints.DEFAULT_MODEL)
  assert saved["vocabulary"] == tokenizer.DEFAULT.to_dict()
  assert shipped.vocab_size == len(tokenizer.DEFAULT)


def test_episode_rules_use_their_vocabulary(imported):
  _, _, vocabulary, _ = imported
  right = arithmetic.scratchpad(57, 8)
  expected = arithmetic.result(57, 8)
  rows = [right,  # ends on their newline after `</scratch>\n`, solved
          right.replace(expected + "\n", "6 6\n"),  # a wrong result line
          right[:30] + "%",  # their padding token
          right[:20] + EOT,  # their end token
          "\n\n\n"]  # newlines before the close do not end it (then digits to the limit)
  ids = np.full((len(rows), 200), vocabulary.token_id("7"), np.int32)
  for i, text in enumerate(rows):
    row = (vocabulary.encode(text[:-len(EOT)]).tolist() + [vocabulary.tokens.index(EOT)]
           if text.endswith(EOT) else vocabulary.encode(text).tolist())
    ids[i, :len(row)] = row
  exp, exp_len = vocabulary.encode_batch([expected] * len(rows))
  final = task_lib.score_tokens(jnp.asarray(ids), jnp.asarray(exp), jnp.asarray(exp_len), 180,
                                task_lib.episode_rules(vocabulary))
  assert len(right) < 180
  assert np.asarray(final.lengths).tolist() == [len(right), len(right), 31, 21, 180]
  assert np.asarray(final.termination).tolist() == [
      trajectory_lib.END_OF_RESULT, trajectory_lib.END_OF_RESULT, trajectory_lib.PAD_EMITTED,
      trajectory_lib.PAD_EMITTED, trajectory_lib.MAX_LENGTH]
  assert np.asarray(final.solved).tolist() == [True, False, False, False, False]


def test_generation_with_their_vocabulary(imported):
  params, gpt, vocabulary, _ = imported
  operands = np.array([[5, 7], [12, 9], [3, 40]])
  problems = task_lib.encode_problems(operands, 20, vocabulary)
  assert (np.asarray(problems.prompts)[0, len(arithmetic.prompt(5, 7)):] == vocabulary.pad_id).all()
  rules = task_lib.episode_rules(vocabulary)
  traj = sampling.rollout(params, gpt, problems, jax.random.key(0), rules=rules,
                          max_new_tokens=40, temperature=1.0)
  # Each row's generation starts right after its own prompt.
  generated = np.stack([row[start:start + 40] for row, start in
                        zip(np.asarray(traj.tokens), np.asarray(problems.prompt_lengths))])
  final = task_lib.score_tokens(jnp.asarray(generated), problems.expected,
                                problems.expected_lengths, 40, rules)
  np.testing.assert_array_equal(final.lengths, traj.lengths)
  np.testing.assert_array_equal(final.termination, traj.termination)
  texts = sampling.completions(traj, vocabulary)
  assert [len(t) <= n for t, n in zip(texts, np.asarray(traj.lengths))] == [True] * 3
  # A model made to prefer their end token stops on it at once.
  e = params["wte"]["embedding"]
  eot = vocabulary.tokens.index(EOT)
  biased = dict(params, wte={"embedding": e.at[eot].mul(20.0)},
                ln_f={"scale": jnp.zeros_like(params["ln_f"]["scale"]), "bias": e[eot]})
  traj = sampling.rollout(biased, gpt, problems, jax.random.key(0), rules=rules,
                          max_new_tokens=40, greedy=True)
  assert np.asarray(traj.lengths).tolist() == [1, 1, 1]
  assert (np.asarray(traj.termination) == trajectory_lib.PAD_EMITTED).all()
  # The default vocabulary cannot drive this model.
  with pytest.raises(ValueError, match="vocabulary of 41 tokens for a model of vocab_size 45"):
    sampling.rollout(params, gpt, problems, jax.random.key(0), rules=task_lib.RULES,
                     max_new_tokens=40)


def test_evaluation_and_rl_run_on_the_imported_model(imported, tmp_path):
  params, gpt, vocabulary, directory = imported
  solved, texts = evaluation.solve(params, gpt, np.array([[5, 7], [3, 4]]), jax.random.key(0),
                                   greedy=False, batch_size=2, vocabulary=vocabulary)
  assert solved.shape == (2,) and len(texts) == 2
  c = rl_default.get_config()
  c.checkpoint = directory
  c.update(num_seeds=1, num_iterations=1, episodes_per_collect=4, num_minibatches=2,
           eval_episodes=4, critical_eval_problems=4, matched_problems=4, checkpoint_every=1,
           temperature=2.0, arms="standard,prioritized")
  out = finetune.finetune(c, str(tmp_path / "rl"), log=lambda _: None)
  assert out.task.vocabulary == vocabulary
  assert all(np.isfinite(run["loss"]) for run in out.history[0]["runs"])


def _damage(snapshot, tmp_path, change) -> str:
  source = str(tmp_path / "gpt2_reduced_vocab_FT_1digits")
  shutil.copytree(snapshot, source)
  change(source)
  return source


def _edit_tensors(edit):
  def change(source):
    path = os.path.join(source, "model.safetensors")
    tensors = safetensors.numpy.load_file(path)
    edit(tensors)
    safetensors.numpy.save_file(tensors, path)
  return change


def _edit_json(name, edit):
  def change(source):
    path = os.path.join(source, name)
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    edit(data)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(data, f, ensure_ascii=False)
  return change


def _write(name, text):
  def change(source):
    with open(os.path.join(source, name), "w") as f:
      f.write(text)
  return change


def _no_biases(tensors):
  for k in [k for k in tensors if k.endswith(".bias")]:
    del tensors[k]


def _untie(tensors):
  tensors["transformer.wte.weight"] = tensors["lm_head.weight"] + 1.0


def _as_torch_pickle(source):
  os.remove(os.path.join(source, "model.safetensors"))
  _write("pytorch_model.bin", "not read without torch")(source)


class _RunsCode:
  """What a malicious pickle holds: unpickling it would call print."""
  def __reduce__(self):
    return print, ("this pickle ran code",)


DAMAGE = {
    "missing key": (_edit_tensors(lambda t: t.pop("transformer.h.1.mlp.c_fc.weight")),
                    "lacks transformer.h.1.mlp.c_fc.weight"),
    "wrong shape": (_edit_tensors(lambda t: t.update({"transformer.h.0.attn.c_proj.weight":
                                                      np.zeros((16, 8), np.float32)})),
                    "transformer.h.0.attn.c_proj.weight has shape (16, 8), expected (16, 16)"),
    "unexpected weight": (_edit_tensors(lambda t: t.update({"transformer.h.0.attn.q.weight":
                                                            np.zeros(4, np.float32)})),
                          "does not: transformer.h.0.attn.q.weight"),
    "untied head": (_edit_tensors(_untie), "lm_head.weight differs from transformer.wte.weight"),
    "bias-free weights": (_edit_tensors(_no_biases), "bias-free layout"),
    "bias-free config": (_edit_json("config.json", lambda c: c.update(bias=False)),
                         "bias-free layout (bias: False)"),
    "unparsable config": (_write("config.json", '{"n_layer": 2,'), "config.json is not valid JSON"),
    "config without n_head": (_edit_json("config.json", lambda c: c.pop("n_head")),
                              "config.json lacks n_head"),
    "missing task character": (_edit_json("tokenizer.json",
                                          lambda t: t["model"]["vocab"].pop("C")),
                               "lacks characters of the task: 'C'"),
    "multi-character token": (_edit_json("tokenizer.json",
                                         lambda t: t["model"]["vocab"].update({"12": 44})),
                              "token '12' (id 44) is not one character"),
    "no tokenizer": (lambda s: os.remove(os.path.join(s, "tokenizer.json")),
                     "no tokenizer.json or vocab.json"),
    "torch pickle": (_as_torch_pickle, "reading it needs torch"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_or_foreign_snapshot_is_a_clear_error(snapshot, tmp_path, monkeypatch, case):
  change, message = DAMAGE[case]
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, as without torch
  source = _damage(snapshot, tmp_path, change)
  with pytest.raises(checkpoints.CheckpointError) as error:
    nanogpt_import.import_checkpoint(source, str(tmp_path / "model"))
  assert message in str(error.value)
  assert not os.path.exists(tmp_path / "model")


def test_torch_pickle_is_read_as_tensors_only(snapshot, tmp_path, capfd):
  torch = pytest.importorskip("torch")
  def as_pickle(extra):
    def change(source):
      os.remove(os.path.join(source, "model.safetensors"))
      state = {k: torch.from_numpy(v) for k, v in their_tensors().items()}
      torch.save(dict(state, **extra), os.path.join(source, "pytorch_model.bin"))
    return change
  source = _damage(snapshot, tmp_path / "plain", as_pickle({}))
  params, config = nanogpt_import.import_checkpoint(source, str(tmp_path / "model"))
  ids = np.arange(VOCAB_SIZE)[None]
  ours = model_lib.forward(params, model_lib.GPTConfig(**config["model"]), jnp.asarray(ids))
  np.testing.assert_allclose(ours.logits, numpy_forward(their_tensors(), ids), atol=2e-4,
                             rtol=1e-4)
  source = _damage(snapshot, tmp_path / "malicious", as_pickle({"x": _RunsCode()}))
  with pytest.raises(checkpoints.CheckpointError, match="as tensors only"):
    nanogpt_import.import_checkpoint(source, str(tmp_path / "other"))
  assert "this pickle ran code" not in capfd.readouterr().out


def test_digits_come_from_the_name_or_the_argument(snapshot, tmp_path):
  source = str(tmp_path / "some_model")
  shutil.copytree(snapshot, source)
  with pytest.raises(checkpoints.CheckpointError, match="give pretrain_max_digits"):
    nanogpt_import.import_checkpoint(source, str(tmp_path / "model"))
  _, config = nanogpt_import.import_checkpoint(source, str(tmp_path / "model"),
                                               pretrain_max_digits=2)
  assert config["pretrain_max_digits"] == 2
  with pytest.raises(checkpoints.CheckpointError, match="exists"):
    nanogpt_import.import_checkpoint(source, str(tmp_path / "model"), pretrain_max_digits=2)


def _cli(*flags, cwd):
  return subprocess.run([sys.executable, "-m", "experiments.import_checkpoint", *flags],
                        cwd=cwd, capture_output=True, text=True, timeout=900,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_imports_and_reports_errors_in_one_line(snapshot, tmp_path):
  proc = _cli(f"--source={snapshot}", f"--export={tmp_path / 'model'}", cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  assert "2 layers" in proc.stdout and "pre-trained on 1..1 digits" in proc.stdout
  _, gpt, _ = checkpoints.load_model(str(tmp_path / "model"))
  assert gpt.vocab_size == VOCAB_SIZE
  source = _damage(snapshot, tmp_path, DAMAGE["missing key"][0])
  proc = _cli(f"--source={source}", f"--export={tmp_path / 'other'}", cwd=ROOT)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2
  assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
  assert "lacks transformer.h.1.mlp.c_fc.weight" in lines[0]
