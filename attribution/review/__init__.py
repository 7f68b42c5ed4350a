"""``gpuattr review``: the capacity review (being split into a package; everything is in ``analysis`` yet)."""

from attribution.review.analysis import Inputs, main, slo

__all__ = ["Inputs", "main", "slo"]
