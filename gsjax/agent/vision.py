"""What a vision-language policy is shown of the images in its conversation.

The reference's rollout downscales each tool image to at most `AgentLimits.max_pixels` pixels
(`gsjax.data.images.fit_pixels`, qwen_vl_utils' rule) before the processor patches it; the same
here, with a processor whose patch, temporal and merge sizes are the policy's vision tower's.
The pixels go to the sampler with the insert that holds their placeholders and stay on the
trajectory, so the update recomputes log-probabilities on exactly what was sampled from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gsjax.data.images import ImageProcessorConfig, fit_pixels, image_token_count, preprocess
from gsjax.models.interface import Pixels


@dataclasses.dataclass(frozen=True)
class PolicyImages:
    """The processor settings of one policy and the rollout's pixel cap."""

    processor: ImageProcessorConfig
    max_pixels: int

    @classmethod
    def for_tower(cls, vision, max_pixels: int) -> PolicyImages:
        """Qwen3-VL's processor (its pixel bounds) for a tower of `vision`'s sizes. A cap below the
        processor's lower bound (tiny worlds) lowers that bound to one merged patch, so the
        processor does not enlarge what the cap shrank."""
        factor = vision.patch_size * vision.spatial_merge_size
        low = ImageProcessorConfig.min_pixels if max_pixels >= ImageProcessorConfig.min_pixels else factor * factor
        processor = ImageProcessorConfig(patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size,
                                         merge_size=vision.spatial_merge_size, min_pixels=low)
        return cls(processor, max_pixels)

    def pixels(self, paths: Sequence[str]) -> Pixels | None:
        """The images at `paths` as the policy sees them (None for none); an unreadable image
        raises ValueError naming it."""
        if not paths:
            return None
        factor = self.processor.factor
        fitted = [fit_pixels(p, self.max_pixels, factor=factor, min_pixels=min(4 * factor * factor, self.max_pixels))
                  for p in paths]
        values, grids = preprocess(fitted, self.processor)
        return Pixels(values, grids)

    def token_counts(self, pixels: Pixels | None) -> list[int]:
        if pixels is None:
            return []
        return [image_token_count(g, self.processor.merge_size) for g in pixels.grids]


def join(pieces: Sequence[Pixels | None]) -> Pixels | None:
    """Several inserts' pixels as one record, in order (None when there are none)."""
    real = [p for p in pieces if p is not None]
    if not real:
        return None
    return Pixels(np.concatenate([p.values for p in real]), np.concatenate([p.grids for p in real]))
