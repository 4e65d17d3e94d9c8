"""The feature-visualization detector network of `dont-trust-your-eyes…` App. C.1, Table 3.

A six-convolution binary CNN that tells natural images (label 1) from feature
visualizations and intermediate steps of their optimization (label 0). It is the gate
``E`` of the fooling circuit (§2.1, Fig. 4). Table 3 lists kernel sizes, widths and
strides but no padding; we pad every convolution by ``kernel // 2`` so that any input of at
least one pixel keeps a non-empty feature map. The flattened size then depends on the
image size, see :func:`detector_flatten_size`:

=========  ===========================  ===========
input      feature maps (after conv 1…6)  flatten
=========  ===========================  ===========
224 px     75, 38, 19, 10, 5, 3          16·3·3 = 144
64 px      22, 11, 6, 3, 2, 1            16·1·1 = 16
32 px      11, 6, 3, 2, 1, 1             16
=========  ===========================  ===========
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_fv.utils.checkpoint import Checkpoint, read_checkpoint, save_tensors

#: ``(kernel, out_channels, stride)`` of the six convolutions of Table 3.
TABLE3 = ((3, 16, 3), (5, 16, 2), (5, 16, 2), (5, 16, 2), (5, 16, 2), (3, 16, 2))


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def detector_feature_sizes(image_size: int) -> list[int]:
    """Spatial side of the feature map after each of the six convolutions."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    sizes, s = [], image_size
    for k, _, stride in TABLE3:
        s = _conv_out(s, k, stride)
        sizes.append(s)
    return sizes


def detector_flatten_size(image_size: int) -> int:
    """Input width of the final linear layer: ``16 · s²`` with ``s`` the last map side
    (144 at 224 px, 16 at 64 px)."""
    s = detector_feature_sizes(image_size)[-1]
    return TABLE3[-1][1] * s * s


class DetectorCNN(nn.Module):
    """Table 3: conv 3×3/16/s3, four conv 5×5/16/s2, conv 3×3/16/s2, ReLU after each,
    flatten, linear → 1 logit (positive = natural image).

    Args:
        image_size: side ``H = W`` of the ``(B, 3, H, W)`` inputs (fixes the flatten size).
        in_channels: input channels.

    Inputs are RGB in [0, 1] (the bundled models' input space), centred by subtracting 0.5;
    the detector must see the same image space as the model it gates. Convolutions use
    Kaiming-normal initialization (Table 3 does not fix one; PyTorch's default shrinks the
    signal through six layers and training on a small data set then stalls at the majority
    class).
    """

    def __init__(self, image_size: int = 224, in_channels: int = 3) -> None:
        super().__init__()
        self.image_size = int(image_size)
        layers: list[nn.Module] = []
        cin = in_channels
        for k, cout, stride in TABLE3:
            layers += [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(detector_flatten_size(self.image_size), 1)
        for m in self.features:
            if isinstance(m, nn.Conv2d):  # PyTorch's default init shrinks the signal 6 times
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B,)`` for ``(B, 3, image_size, image_size)`` images."""
        if x.dim() != 4 or tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"detector built for (B, C, {self.image_size}, {self.image_size}) input, got "
                f"{tuple(x.shape)}; resize the input or build it with image_size={x.shape[-1]}"
            )
        return self.fc(self.flatten(self.features(x - 0.5))).squeeze(1)

    def resized(self, x: Tensor) -> Tensor:
        """Logits for images of any size: inputs of another size are resized bilinearly
        (antialiased) to ``image_size`` first; inputs of the right size are used as is."""
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False)
        return self(x)


def detector_config(ck: Checkpoint) -> dict[str, Any]:
    """``{"image_size": n}`` stored with a detector: safetensors metadata written by
    ``save_detector``, or the ``hyper_parameters`` of a ``VisualizationDetector`` ``.ckpt``
    (``{}`` when neither is present: the default 224 px)."""
    if "image_size" in ck.metadata:
        return {"image_size": int(ck.metadata["image_size"])}
    hp = ck.extra.get("hyper_parameters") or {}
    return {"image_size": int(hp["image_size"])} if "image_size" in hp else {}


def detector_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The :class:`DetectorCNN` weights: the ``net.*`` entries of a ``VisualizationDetector``
    Lightning checkpoint (metric states dropped), or ``state`` itself for a bare network."""
    if any(k.startswith("net.") for k in state):
        return {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    return state


def save_detector(net: DetectorCNN, path: str | Path) -> Path:
    """Write a :class:`DetectorCNN` as safetensors with its ``image_size``."""
    return save_tensors(net.state_dict(), path, metadata={"image_size": str(net.image_size)})


def load_detector(path: str | Path) -> DetectorCNN:
    """Load a detector saved by ``save_detector`` (safetensors with ``image_size`` in the
    metadata), or the ``net.*`` weights of a Lightning checkpoint of ``VisualizationDetector``,
    through the one checkpoint reader (``weights_only``). Returns it in eval mode."""
    ck = read_checkpoint(path, prefixes=())
    net = DetectorCNN(**detector_config(ck))
    net.load_state_dict(detector_state_dict(ck.state_dict), strict=True)
    return net.eval()


__all__ = ["TABLE3", "DetectorCNN", "detector_config", "detector_feature_sizes",
           "detector_flatten_size", "detector_state_dict", "load_detector", "save_detector"]
