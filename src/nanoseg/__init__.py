"""nanoseg: segment and measure nanoparticles in SEM micrographs.

Subpackages along the data flow: io (micrograph, masks) -> inference (tiling,
model, analyze) -> postprocess -> measure (particles, distribution) -> report;
data, model, evaluation, tracking, pipeline, serving, app and cli are the
training, scoring and orchestration on top (docs/architecture.md).
"""

__version__ = "0.1.0"
