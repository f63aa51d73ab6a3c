"""The compression transforms, one module each, and the registry the pipeline looks names up in.

Each transform is a :class:`~rnnshrink.transforms.base.Transform` subclass; its module holds the
plain math functions it wraps and cites the work it implements.
"""

from .base import Context, Param, Transform
from .ecsq import EntropyCode
from .iss import ISS
from .lowrank import SharedLowRank
from .prune import MagnitudePrune
from .quant import Quantize
from .slim import Slim
from .svd import SVDProjection

REGISTRY = {cls.name: cls for cls in (SVDProjection, SharedLowRank, ISS, MagnitudePrune, Quantize,
                                      Slim, EntropyCode)}

__all__ = ["Context", "Param", "REGISTRY", "Transform"]
