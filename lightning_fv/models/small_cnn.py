"""The bundled small CNN trained on the embedded photo-patches (or digits) data.

Input: ``(B, 3, H, W)`` RGB in [0, 1] (normalization is a module inside the model, so
feature visualization needs no extra preprocessing). Layers, by name:
``block1 … block4`` (each ``conv → bn → relu``, with 2×2 max pooling ``pool1 … pool3``
after blocks 1–3),
``pool`` (global average), ``fc`` (logits).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_fv.utils.preprocess import Normalize


class ConvBlock(nn.Module):
    """``y = ReLU(BN(Conv(x, Θ)))`` with a 3×3 convolution (padding 1)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class SmallCNN(nn.Module):
    """Four conv blocks, global average pooling and a linear classifier.

    Args:
        num_classes: number of output logits.
        widths: channels of the four blocks.
        in_channels: input channels (3 for RGB).
        mean, std: per-channel input normalization applied inside ``forward``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 96, 128),
        in_channels: int = 3,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must have 4 entries, got {list(widths)}")
        self.num_classes = num_classes
        self.widths = tuple(widths)
        self.normalize = Normalize(mean, std)
        chans = (in_channels, *widths)
        for i in range(4):
            self.add_module(f"block{i + 1}", ConvBlock(chans[i], chans[i + 1]))
        self.pool1 = nn.MaxPool2d(2)
        self.pool2 = nn.MaxPool2d(2)
        self.pool3 = nn.MaxPool2d(2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], num_classes)
        _init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate representation ``(B, widths[-1])`` for ``(B, 3, H, W)`` input."""
        x = self.normalize(x)
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.pool3(self.block3(x))
        x = self.block4(x)
        return self.flatten(self.pool(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``."""
        return self.fc(self.features(x))


def small_cnn_config(model: SmallCNN) -> dict[str, object]:
    """Constructor arguments that rebuild ``model`` (stored next to its weights)."""
    return {
        "num_classes": model.num_classes,
        "widths": list(model.widths),
        "mean": model.normalize.mean.flatten().tolist(),
        "std": model.normalize.std.flatten().tolist(),
    }


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


__all__ = ["ConvBlock", "SmallCNN", "small_cnn_config"]
