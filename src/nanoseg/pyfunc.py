"""Compatibility: model versions registered before nanoseg's subpackages hold a ``served_model.py`` that
imports :class:`NanosegPyfunc` from here. The code lives in :mod:`nanoseg.serving.pyfunc`."""

from nanoseg.serving.pyfunc import NanosegPyfunc, served_error  # noqa: F401
