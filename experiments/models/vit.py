"""A Vision Transformer (Dosovitskiy et al. 2021) for training from scratch on small images.

Patches of patch_size x patch_size pixels are flattened and projected ("patch_embed"), a class
token is prepended (pool="cls") and learned positions added; pre-LN encoder blocks
(experiments.models.transformer) follow, then a LayerNorm and the classifier ("head"). The
patch projection and the head stay float in the experiments, as the paper keeps the first and
last layers; the block layers are the INT4 ones.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from experiments.models.transformer import BlockConfig, EncoderBlock, dense


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  image_size: int  # input height = width, in pixels
  channels: int  # input channels (1: grey, 3: RGB)
  patch_size: int  # patch side; image_size must be a multiple
  num_classes: int  # classifier outputs
  num_layers: int  # encoder blocks
  hidden_size: int  # model width d
  num_heads: int  # attention heads
  mlp_ratio: int = 4  # MLP width / d
  dropout: float = 0.0  # residual and attention dropout
  pool: str = "cls"  # "cls": the class token's output; "mean": the mean over patches

  def __post_init__(self):
    if self.image_size % self.patch_size or self.hidden_size % self.num_heads:
      raise ValueError(f"image_size must be a multiple of patch_size and hidden_size of "
                       f"num_heads in {self}")
    if self.pool not in ("cls", "mean"):
      raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


def patchify(images_BxHxWxC, patch: int):
  """(B, H*W/patch^2, patch*patch*C): row-major patches, each flattened (row, column, channel)."""
  b, h, w, c = images_BxHxWxC.shape
  x = images_BxHxWxC.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class ViT(nn.Module):
  cfg: ViTConfig

  @nn.compact
  def __call__(self, images_BxHxWxC, deterministic: bool = True):
    cfg = self.cfg
    if images_BxHxWxC.shape[1:] != (cfg.image_size, cfg.image_size, cfg.channels):
      raise ValueError(f"expected images (B, {cfg.image_size}, {cfg.image_size}, "
                       f"{cfg.channels}), got {images_BxHxWxC.shape}")
    block = BlockConfig(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio, cfg.dropout,
                        out_std=0.02 / (2 * cfg.num_layers) ** 0.5)
    x_BxPxD = dense(cfg.hidden_size, "patch_embed")(patchify(images_BxHxWxC, cfg.patch_size))
    if cfg.pool == "cls":
      cls_1x1xD = self.param("cls_token", nn.initializers.zeros, (1, 1, cfg.hidden_size))
      x_BxPxD = jnp.concatenate(
          [jnp.broadcast_to(cls_1x1xD, (x_BxPxD.shape[0], 1, cfg.hidden_size)), x_BxPxD], 1)
    pos_1xPxD = self.param("pos_embed", nn.initializers.normal(0.02),
                           (1, x_BxPxD.shape[1], cfg.hidden_size))
    x_BxPxD = nn.Dropout(cfg.dropout)(x_BxPxD + pos_1xPxD, deterministic=deterministic)
    for i in range(cfg.num_layers):
      x_BxPxD = EncoderBlock(block, name=f"block_{i}")(x_BxPxD, None, deterministic)
    x_BxPxD = nn.LayerNorm(name="ln_f")(x_BxPxD)
    pooled_BxD = x_BxPxD[:, 0] if cfg.pool == "cls" else jnp.mean(x_BxPxD, axis=1)
    return dense(cfg.num_classes, "head")(pooled_BxD)  # logits_BxC
