"""Facts about the machine a run happens on, recorded with every run and benchmark (MLflow tags/params,
``metrics/*.json``, bench results): the CPU kind decides the training steps a wall-clock budget buys."""

from __future__ import annotations

from pathlib import Path


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
