"""Feature constants and the image spec shared by Transform, Trainer and serving."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

IMAGE_XF = "image_xf"
LABEL_XF = "label_xf"
PROBABILITIES = "probabilities"
CLASS_IDS = "class_ids"
SERVING_INPUT = "examples"


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """Raw feature keys and the model's input image shape."""

    image_key: str
    label_key: str
    height: int
    width: int
    channels: int
    num_classes: int

    @classmethod
    def from_custom_config(cls, config: Mapping[str, Any]) -> "ImageSpec":
        return cls(image_key=config["image_key"], label_key=config["label_key"],
                   height=int(config["image_height"]), width=int(config["image_width"]),
                   channels=int(config["image_channels"]), num_classes=int(config["num_classes"]))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.channels
