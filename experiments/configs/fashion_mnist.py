"""A ViT trained from scratch on Fashion-MNIST (Debian's dataset-fashion-mnist, offline).

  python -m experiments.main --task fashion_mnist --size cpu    # minutes per run on 2 cores
  python -m experiments.main --task fashion_mnist --size gpu    # ViT-S-like width, 4x4 patches

Users with internet: `--dataset cifar10` (or cifar100 with num_classes=100) goes through tfds.
Goal: int4 within 1.0 accuracy point of fp32 (the paper: -3.92 for DeiT-Small trained from
scratch on ImageNet-1k; -0.41 for a pretrained ViT-B/32 fine-tuned on CIFAR-10).
Results: experiments/results/vit_fashion_mnist.{json,md,png}.
"""

from experiments.tasks.vision import VisionConfig

SIZES = ("cpu", "gpu")


def get_config(size: str = "cpu") -> VisionConfig:
  base = VisionConfig(task="vit_fashion_mnist", title="ViT trained from scratch on "
                      "Fashion-MNIST")
  if size == "cpu":  # 7x7 patches: 16 patches + the class token
    return base.replace(patch_size=7, num_layers=4, hidden_size=128, num_heads=4,
                        batch_size=128, epochs=2.0, eval_every=235, log_every=25)
  return base.replace(task="vit_fashion_mnist_gpu", patch_size=4, num_layers=8,
                      hidden_size=384, num_heads=6, batch_size=256, epochs=30.0,
                      warmup_steps=500, dropout=0.1, log_every=50)
