"""A GPT trained from scratch on the complete works of Shakespeare (BPE, whole works held out).

  python -m experiments.main --task shakespeare --size cpu    # 4 blocks, d 128: minutes on 2 cores
  python -m experiments.main --task shakespeare --size cpu-char   # bytes as tokens, 3 blocks
  python -m experiments.main --task shakespeare --size cpu-char-flax-mha  # nn.MultiHeadDot...
  python -m experiments.main --task shakespeare --size gpu    # GPT-2-small blocks, seq 1024
  python -m experiments.main --task shakespeare --size gpu-h2048 --variants fp32 int4 --seeds 0
  python -m experiments.main --task shakespeare --size gpu-h4096 --variants fp32 int4 --seeds 0

Goal: int4's validation loss within 2% of fp32's with every block linear layer INT4 (the output
head and the embeddings stay float). The gpu-h2048 / gpu-h4096 sizes are for throughput
(ms/step, fp32 vs int4), with few steps.
Results: experiments/results/gpt_shakespeare.{json,md,png} (the cpu size) and
gpt_shakespeare_char.* (cpu-char: the character-level setting in which the LM gap was first
reported).
"""

from experiments.tasks.lm import LMConfig

SIZES = ("cpu", "cpu-char", "cpu-char-flax-mha", "gpu", "gpu-h2048", "gpu-h4096")


def get_config(size: str = "cpu") -> LMConfig:
  base = LMConfig(task="gpt_shakespeare", title="GPT trained from scratch on Shakespeare")
  if size == "cpu-char-flax-mha":  # the same with Flax's attention module, as users write it
    return get_config("cpu-char").replace(
        task="gpt_shakespeare_char_flax_mha", attention="flax",
        title="GPT (Flax MultiHeadDotProductAttention) on Shakespeare, character level")
  if size == "cpu-char":  # character-level (257 = the 256 bytes + end of text: no BPE merges)
    return base.replace(task="gpt_shakespeare_char", vocab_size=257, num_layers=3, steps=300,
                        eval_every=50, log_every=20, warmup_steps=30, eval_windows=128,
                        title="GPT trained from scratch on Shakespeare, character level")
  if size == "cpu":
    return base.replace(batch_size=16, steps=500, warmup_steps=30, eval_every=100, log_every=20,
                        eval_windows=128)
  gpu = dict(vocab_size=8192, seq_len=1024, batch_size=32, learning_rate=6e-4,
             warmup_steps=200, eval_every=500, log_every=50, task=f"gpt_shakespeare_{size}")
  shapes = {"gpu": dict(num_layers=12, hidden_size=768, num_heads=12, steps=5000),
            "gpu-h2048": dict(num_layers=8, hidden_size=2048, num_heads=16, steps=300,
                              eval_every=300),
            "gpu-h4096": dict(num_layers=4, hidden_size=4096, num_heads=32, steps=300,
                              eval_every=300, batch_size=16)}
  return base.replace(**{**gpu, **shapes[size]})
