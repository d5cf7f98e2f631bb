"""Pre-training on a 2-core CPU: a 3-layer, 128-wide GPT on 1..3-digit addition (minutes).

Several devices: `--config.sharding.data=0` splits each batch over all devices (batch_size must be
a multiple of their number); `--config.sharding.params=2` also splits large parameters over pairs
of devices (FSDP). See critical_kl/sharding.py and BUILD.md.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.pretrain_max_digits = 3  # N: operands of 1..N digits
  # The context must hold the longest problem evaluated (N + 3 digits) plus the 100 extra tokens an
  # RL episode may run; 0 means "compute it from the format" (see pretrain.model_config).
  c.model = ml_collections.ConfigDict(dict(
      n_layer=3, n_head=4, n_embd=128, value_hidden=128, block_size=0, dtype="float32"))
  # [ours, SPEC §3] each training sequence starts at a random position so that every position
  # embedding is trained and copying becomes relative.
  c.random_start_positions = True
  c.batch_size = 32  # problems per step, fresh ones every step (seeded by step: resumable)
  c.num_steps = 1500
  c.learning_rate = 1e-3
  c.warmup_steps = 100
  c.min_learning_rate_ratio = 0.1  # cosine decay to this fraction of the peak
  c.weight_decay = 0.1
  c.grad_clip = 1.0
  c.log_every = 50
  c.checkpoint_every = 250
  # [ours] a share of each batch from N+1..N+k problems whose critical decisions are held out of the
  # loss (see critical_kl/pretrain.py); 0: none.
  c.held_out_digits = 0
  c.held_out_fraction = 0.25
  # What the loss skips in those rows: "decisions" (the critical tokens and the `]` after each
  # critical run) or "lines" (every token up to the end of the last line holding one).
  c.held_out_scope = "decisions"
  c.init_checkpoint = ""  # an exported model to start from ("": random initialization)
  c.ensemble_members = 0  # K > 0: train K models at once, member k with seed + k (an ensemble)
  c.eval_every = 0  # print greedy accuracy at N and N+1 every this many steps (0: never)
  c.eval_num_examples = 200  # problems per accuracy figure printed during and after training
  # Device mesh: data × params devices; data = 0 means all devices // params. 1 × 1: one device.
  c.sharding = ml_collections.ConfigDict(dict(data=1, params=1))
  return c
