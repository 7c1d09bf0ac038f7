"""A GPT trained from scratch on the complete works of Shakespeare (BPE, whole works held out).

  python -m experiments.main --task shakespeare --size cpu    # 4 blocks, d 128: minutes on 2 cores
  python -m experiments.main --task shakespeare --size cpu-char   # bytes as tokens, past bigrams
  python -m experiments.main --task shakespeare --size cpu-char-300   # 3 blocks, 300 steps
  python -m experiments.main --task shakespeare --size cpu-char-flax-mha  # nn.MultiHeadDot...
  python -m experiments.main --task shakespeare --size gpu-char   # nanoGPT's shakespeare-char
  python -m experiments.main --task shakespeare --size gpu    # GPT-2-small blocks, seq 1024
  python -m experiments.main --task shakespeare --size gpu-h2048 --variants fp32 int4 --seeds 0
  python -m experiments.main --task shakespeare --size gpu-h4096 --variants fp32 int4 --seeds 0

Goal: int4's validation loss within 2% of fp32's with every block linear layer INT4 (the output
head and the embeddings stay float). The gpu-h2048 / gpu-h4096 sizes are for throughput
(ms/step, fp32 vs int4), with few steps.
Results: experiments/results/gpt_shakespeare.{json,md,png} (the cpu size) and
gpt_shakespeare_char.* (cpu-char). cpu-char trains 4 blocks of width 192 for 1500 steps, to a
held-out loss well below the byte n-gram models' (shakespeare_char_ngrams.md,
experiments.analysis.ngram_baselines): the regime where INT4's gap shows. Its learning rate is fp32's best in a committed sweep
(gpt_shakespeare_char_lr_sweep.md, experiments.analysis.lr_sweep). cpu-char-300 (and
cpu-char-flax-mha, the same with Flax's attention) is the earlier setting, 3 blocks for 300
steps: a model that has learned little beyond byte bigrams, where the gap is small.
"""

from experiments.tasks.lm import LMConfig

SIZES = ("cpu", "cpu-char", "cpu-char-300", "cpu-char-flax-mha", "gpu-char", "gpu", "gpu-h2048",
         "gpu-h4096")
# fp32's best peak learning rate for cpu-char in gpt_shakespeare_char_lr_sweep.md
CPU_CHAR_LEARNING_RATE = 2e-3


def get_config(size: str = "cpu") -> LMConfig:
  base = LMConfig(task="gpt_shakespeare", title="GPT trained from scratch on Shakespeare")
  if size == "cpu-char-300":  # the earlier setting: 3 blocks, 300 steps (a bigram-stage model)
    return base.replace(task="gpt_shakespeare_char_300", vocab_size=257, num_layers=3, steps=300,
                        eval_every=50, log_every=20, warmup_steps=30, eval_windows=128,
                        title="GPT on Shakespeare, character level, 300 steps")
  if size == "cpu-char-flax-mha":  # cpu-char-300 with Flax's attention module, as users write it
    return get_config("cpu-char-300").replace(
        task="gpt_shakespeare_char_flax_mha", attention="flax",
        title="GPT (Flax MultiHeadDotProductAttention) on Shakespeare, character level")
  if size == "cpu-char":  # character level (257 = the 256 bytes + end of text: no BPE merges)
    return base.replace(task="gpt_shakespeare_char", vocab_size=257, num_layers=4,
                        hidden_size=192, num_heads=4, seq_len=128, batch_size=32, steps=1500,
                        learning_rate=CPU_CHAR_LEARNING_RATE, warmup_steps=100, eval_every=250,
                        log_every=50, eval_windows=256,
                        title="GPT trained from scratch on Shakespeare, character level")
  if size == "gpu-char":  # nanoGPT's shakespeare-char shape and schedule (AdamW b2 0.95 here)
    return base.replace(task="gpt_shakespeare_gpu_char", vocab_size=257, num_layers=6,
                        hidden_size=384, num_heads=6, seq_len=256, batch_size=64, dropout=0.2,
                        steps=5000, learning_rate=1e-3, min_lr_ratio=0.1, warmup_steps=100,
                        eval_every=250, log_every=50, eval_windows=None,
                        title="GPT on Shakespeare, character level, nanoGPT's shakespeare-char "
                        "shape")
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
