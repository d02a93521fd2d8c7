"""Shared test models: a tiny random-init variant of the network keeps tests fast."""

from training.model import ColorizerConfig

TINY = ColorizerConfig(
    backbone="mobilenetv3_small_050",
    embed_dim=16,
    encoder_channels=(4, 8, 8, 8, 8, 8, 8, 8),
    fusion_channels=8,
    decoder_channels=(8, 4, 4, 4),
)
