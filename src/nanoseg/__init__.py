"""nanoseg: segment and measure nanoparticles in SEM micrographs.

Data flow (one module per step): micrograph -> tiling -> model -> predict ->
postprocess -> measure -> distribution. Training, cross-validation, tracking
and serving are thin orchestration on top of those pieces.
"""

__version__ = "0.1.0"
