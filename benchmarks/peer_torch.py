"""The peer of the RL benchmark: our RL iteration in eager PyTorch with Hugging Face transformers.

What a PyTorch user would write for the iteration of `critical_kl.rl.make_iteration` under the
benchmark's config (A2C, one update over all the episodes of a collect):

  1. `generate()` with its KV cache, sampling at temperature τ from the whole distribution
     (top_k=0), on the prompts left-padded as Hugging Face decoders expect;
  2. the episode rules and reward of `critical_kl.task` on the host: an episode ends at the
     newline after `</scratch>\\n`, at the padding token or at its length limit;
  3. a frozen reference forward: log-probabilities at τ, the certainty Ĵ and the token weights
     (1 − b)·Ĵ^β + b;
  4. a forward of the policy, GAE on its detached values (the rollout's values, since the
     parameters have not moved yet), the A2C loss with the k2 KL and the value loss, backward;
  5. clipping to the global gradient norm (when the config clips) and one Adam step.

The model is `transformers.GPT2LMHeadModel` (the nanoGPT layout of `critical_kl.model`: tanh GELU,
tied embeddings, no dropout) with the value MLP on the final hidden state, loaded with our
parameters, so that both sides start from the same weights. Install with `pip install -e '.[peer]'`.
"""
import copy
import math
import time
from typing import NamedTuple

import numpy as np
import torch
import transformers

from critical_kl import arithmetic
from critical_kl import model as model_lib
from critical_kl import rl_config as rl_config_lib
from critical_kl import task as task_lib
from critical_kl import tokenizer

# The settings of the benchmark's RL config that this peer implements.
SUPPORTED = dict(objective="a2c", estimator="k2", certainty_method="negentropy_max_prob",
                 num_minibatches=1, kl_placement="loss", normalize_advantages=False, use_kl=True)


def _setting(config: rl_config_lib.RLConfig, name: str):
  """A field of the typed config or of its loss hyper-parameters."""
  return getattr(config.loss, name) if hasattr(config.loss, name) else getattr(config, name)


def versions() -> dict:
  return dict(torch=torch.__version__, transformers=transformers.__version__,
              threads=torch.get_num_threads())


class PolicyValue(torch.nn.Module):
  """GPT-2 of transformers with the value head of `critical_kl.model` on the final hidden state."""

  def __init__(self, gpt: model_lib.GPTConfig):
    super().__init__()
    if gpt.dtype != "float32":
      raise ValueError(f"the peer computes in float32, got dtype {gpt.dtype!r}")
    self.lm = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=gpt.vocab_size, n_positions=gpt.block_size, n_embd=gpt.n_embd,
        n_layer=gpt.n_layer, n_head=gpt.n_head, activation_function="gelu_new",
        layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=True, bos_token_id=tokenizer.PAD_ID,
        eos_token_id=tokenizer.PAD_ID, pad_token_id=tokenizer.PAD_ID))
    hidden = gpt.value_hidden
    self.value = torch.nn.Sequential(
        torch.nn.Linear(gpt.n_embd, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

  def forward(self, tokens, attention_mask):
    """Teacher-forced logits [B, T, V] and values [B, T] of left-padded tokens [B, T]."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = self.lm.transformer(input_ids=tokens, attention_mask=attention_mask,
                                 position_ids=positions, use_cache=False).last_hidden_state
    return self.lm.lm_head(hidden), self.value(hidden)[..., 0]


def _state_dict(params, gpt: model_lib.GPTConfig) -> dict[str, torch.Tensor]:
  """Our flax parameters under the names of `PolicyValue`."""
  tensor = lambda x: torch.tensor(np.asarray(x))
  out = {}

  def put(name, layer, weight="kernel", transpose=False):
    w = tensor(layer[weight])
    out[f"{name}.weight"], out[f"{name}.bias"] = (w.T if transpose else w), tensor(layer["bias"])

  out["lm.transformer.wte.weight"] = out["lm.lm_head.weight"] = tensor(params["wte"]["embedding"])
  out["lm.transformer.wpe.weight"] = tensor(params["wpe"]["embedding"])
  put("lm.transformer.ln_f", params["ln_f"], "scale")
  for i in range(gpt.n_layer):
    block, prefix = params[f"h_{i}"], f"lm.transformer.h.{i}"
    put(f"{prefix}.ln_1", block["ln_1"], "scale")
    put(f"{prefix}.ln_2", block["ln_2"], "scale")
    # transformers' Conv1D keeps the [in, out] kernel layout of flax's Dense.
    put(f"{prefix}.attn.c_attn", block["attn"]["c_attn"])
    put(f"{prefix}.attn.c_proj", block["attn"]["c_proj"])
    put(f"{prefix}.mlp.c_fc", block["c_fc"])
    put(f"{prefix}.mlp.c_proj", block["mlp_proj"])
  for j, name in enumerate(("value_0", "value_1", "value_out")):
    put(f"value.{2 * j}", params[name], transpose=True)  # torch.nn.Linear holds [out, in]
  return out


def policy_from_params(params, gpt: model_lib.GPTConfig) -> PolicyValue:
  policy = PolicyValue(gpt)
  policy.load_state_dict(_state_dict(params, gpt))
  return policy


def left_pad(prompts, prompt_lengths) -> tuple[torch.Tensor, torch.Tensor]:
  """Right-padded prompts [B, P] moved to the right end of their rows, and their attention mask."""
  prompts, lengths = np.asarray(prompts), np.asarray(prompt_lengths)
  width = prompts.shape[1]
  shift = (width - lengths)[:, None]
  columns = (np.arange(width)[None, :] - shift) % width  # the shifted-in columns hold padding
  ids = np.take_along_axis(prompts, columns, axis=1)
  mask = np.arange(width)[None, :] >= shift
  return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def episode_lengths_and_rewards(generated: np.ndarray, expected: list[str],
                                failure_reward: float) -> tuple[np.ndarray, np.ndarray]:
  """The episode rules of `critical_kl.task` on generated tokens [B, N], on the host.

  Returns:
    lengths int [B], tokens up to and including the one that ends each episode, and the reward of
    that last token float32 [B]: 1 for the right result line, else `failure_reward`.
  """
  lengths, rewards = [], []
  for row, want in zip(generated, expected):
    pads = np.flatnonzero(row == tokenizer.PAD_ID)
    length = int(pads[0]) + 1 if pads.size else len(row)
    text = tokenizer.decode(row[:length])  # without the padding token, so indices stay aligned
    result = arithmetic.extract_result(text)
    if result is not None:
      start = text.index(arithmetic.SCRATCH_CLOSE) + len(arithmetic.SCRATCH_CLOSE)
      length = start + len(result) + 1
    lengths.append(length)
    rewards.append(1.0 if result == want else failure_reward)
  return np.array(lengths), np.array(rewards, np.float32)


def gae(rewards, values, mask, gamma: float, lam: float):
  """`critical_kl.advantages.gae` over [B, N]: advantages and returns, 0 where mask is 0."""
  next_mask = torch.nn.functional.pad(mask[:, 1:], (0, 1))
  next_values = torch.nn.functional.pad(values[:, 1:], (0, 1)) * next_mask
  deltas = rewards + gamma * next_values - values
  advantages = torch.zeros_like(deltas)
  running = torch.zeros_like(deltas[:, 0])
  for t in reversed(range(deltas.shape[1])):
    running = deltas[:, t] + gamma * lam * next_mask[:, t] * running
    advantages[:, t] = running
  advantages = advantages * mask
  return advantages, (advantages + values) * mask


def _logp(logits, actions, temperature: float):
  """log softmax(logits / τ) [B, N, V] and its entries at the actions [B, N]."""
  log_probs = torch.log_softmax(logits / temperature, dim=-1)
  return log_probs, log_probs.gather(-1, actions[..., None])[..., 0]


class Episodes(NamedTuple):
  """One collect: tokens [B, P + N] (left-padded prompts, then N generated columns), the prompts'
  attention mask [B, P], and per episode its length [B] and the reward of its last token [B]."""
  tokens: torch.Tensor
  prompt_mask: torch.Tensor
  lengths: np.ndarray
  final_rewards: np.ndarray


class Peer:
  """The policy, its frozen reference and Adam: collects and updates as one RL iteration does."""

  def __init__(self, params, gpt: model_lib.GPTConfig, config: rl_config_lib.RLConfig, *,
               beta: float, max_new_tokens: int, ref_params=None):
    """`ref_params`: the reference model's parameters, by default `params` (as in the benchmark)."""
    wrong = {k: _setting(config, k) for k, v in SUPPORTED.items() if _setting(config, k) != v}
    if wrong:
      raise ValueError(f"the eager PyTorch peer implements {SUPPORTED}, got {wrong}")
    torch.manual_seed(config.seed)
    self.config, self.beta = config, beta
    self.policy = policy_from_params(params, gpt)
    self.reference = (copy.deepcopy(self.policy) if ref_params is None
                      else policy_from_params(ref_params, gpt)).requires_grad_(False)
    self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate)
    self.generation = transformers.GenerationConfig(
        do_sample=True, temperature=config.temperature, top_k=0, top_p=1.0,
        max_new_tokens=max_new_tokens, bos_token_id=tokenizer.PAD_ID,
        eos_token_id=tokenizer.PAD_ID, pad_token_id=tokenizer.PAD_ID)

  def collect(self, problems: task_lib.Problems, max_new_tokens: int | None = None) -> Episodes:
    """One episode per problem, at most `max_new_tokens` tokens each (default: the limit)."""
    prompts, prompt_mask = left_pad(problems.prompts, problems.prompt_lengths)
    limit = {} if max_new_tokens is None else dict(max_new_tokens=max_new_tokens)
    with torch.no_grad():
      tokens = self.policy.lm.generate(input_ids=prompts, attention_mask=prompt_mask,
                                       generation_config=self.generation, **limit)
    expected = [tokenizer.decode(row[:n]) for row, n in
                zip(np.asarray(problems.expected), np.asarray(problems.expected_lengths))]
    lengths, final_rewards = episode_lengths_and_rewards(
        tokens[:, prompts.shape[1]:].numpy(), expected, self.config.failure_reward)
    return Episodes(tokens, prompt_mask, lengths, final_rewards)

  def _weights_and_ref_logp(self, tokens, attention, start: int):
    """The reference pass over the generated tokens [B, N]: token weights and log-probs at τ."""
    c = self.config
    with torch.no_grad():
      ref_logits = self.reference(tokens, attention)[0][:, start - 1:-1]
      _, ref_logp = _logp(ref_logits, tokens[:, start:], c.temperature)
      top = torch.log_softmax(ref_logits / c.certainty_temperature, -1).amax(-1)
      certainty = (1.0 + top / math.log(ref_logits.shape[-1])).clamp(0.0, 1.0)
      return (1.0 - c.intercept) * certainty**self.beta + c.intercept, ref_logp

  def _loss(self, tokens, attention, start: int, mask, rewards, ref_logp, weights):
    c = self.config
    logits, values = self.policy(tokens, attention)
    # Entry t - 1 of a teacher-forced output is about token t: the generated ones start at `start`.
    log_probs, logp = _logp(logits[:, start - 1:-1], tokens[:, start:], c.temperature)
    values = values[:, start - 1:-1]
    advantages, returns = gae(rewards, values.detach(), mask, c.gamma, c.lam)
    mean = lambda x: (x * mask).sum() / mask.sum().clamp(min=1.0)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    kl = 0.5 * torch.square(logp - ref_logp)
    terms = c.loss
    return (-mean(logp * advantages) + terms.value_coef * mean(torch.square(returns - values))
            - terms.entropy_coef * mean(entropy) + terms.kl_coef * mean(weights * kl))

  def update(self, episodes: Episodes) -> float:
    """The reference pass, the loss, its gradient and one Adam step; returns the loss."""
    start = episodes.prompt_mask.shape[1]
    steps = torch.arange(episodes.tokens.shape[1] - start)[None, :]
    lengths = torch.tensor(episodes.lengths)[:, None]
    mask = (steps < lengths).float()
    rewards = torch.where(steps == lengths - 1, torch.tensor(episodes.final_rewards)[:, None], 0.0)
    attention = torch.cat([episodes.prompt_mask, torch.ones_like(steps).expand_as(mask)], dim=1)
    weights, ref_logp = self._weights_and_ref_logp(episodes.tokens, attention, start)
    loss = self._loss(episodes.tokens, attention, start, mask, rewards, ref_logp, weights)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if self.config.grad_clip:  # as `rl.make_optimizer`: 0 means no clipping
      torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip)
    self.optimizer.step()
    return loss.item()

  def iteration(self, problems: task_lib.Problems, max_new_tokens: int | None = None) -> dict:
    """`collect`, then `update`.

    Returns:
      generate_s (generation and the episode rules), update_s, iteration_s, tokens (generated,
      summed over the episodes) and the loss.
    """
    start = time.perf_counter()
    episodes = self.collect(problems, max_new_tokens)
    collected = time.perf_counter()
    loss = self.update(episodes)
    end = time.perf_counter()
    return dict(generate_s=collected - start, update_s=end - collected, iteration_s=end - start,
                tokens=int(episodes.lengths.sum()), loss=loss)


def measure(params, gpt: model_lib.GPTConfig, config: rl_config_lib.RLConfig,
            problems: task_lib.Problems, *, beta: float, max_new_tokens: int, reps: int,
            threads: int | None = None, warmup_tokens: int = 8) -> dict:
  """The best of `reps` peer iterations on `problems`, after a short one that warms up
  allocations and creates Adam's moments.

  Args:
    params: our GPT parameters, loaded into the policy and its frozen reference.
    gpt: their architecture.
    config: the RL config (see SUPPORTED).
    problems: B encoded problems; prompts [B, P].
    beta: β of the token weights (0: the standard KL).
    max_new_tokens: the episodes' length limit.
    reps: timed iterations.
    threads: torch's intra-op threads, for the rest of the process (default: torch's, one per
      core). On a machine whose cores other processes keep busy, threads that wait for each
      other at every small operation make generation many times slower.
    warmup_tokens: tokens per episode of the untimed first iteration.

  Returns:
    The best iteration's figures (see `Peer.iteration`) with its generated-and-trained tokens/s,
    generation tokens/s and `versions()`.
  """
  if threads:
    torch.set_num_threads(threads)
  peer = Peer(params, gpt, config, beta=beta, max_new_tokens=max_new_tokens)
  peer.iteration(problems, max_new_tokens=min(warmup_tokens, max_new_tokens))
  best = min((peer.iteration(problems) for _ in range(reps)), key=lambda f: f["iteration_s"])
  return dict(best, tokens_per_s=best["tokens"] / best["iteration_s"],
              generate_tokens_per_s=best["tokens"] / best["generate_s"], **versions())
