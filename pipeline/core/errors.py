"""The project's own errors: something the user gave (a parameter, a data file, a previous stage's
output, the machine) is wrong or missing, and the message names it and what to do.

A stage prints these as one line and exits 1 (``stages.common.run``); any other exception is a bug
and keeps its traceback. Each subclasses the built-in error it used to be, so ``except ValueError``
and ``except FileNotFoundError`` still catch them.
"""

from __future__ import annotations

__all__ = ["InputError", "MissingInputError", "SetupError"]


class InputError(ValueError):
    """A parameter, a data file or a previous stage's output is invalid; the message names it."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder the step needs is not there (often: an earlier stage has not run)."""


class SetupError(InputError, RuntimeError):
    """The machine lacks what the parameters ask for (CUDA, network access to pretrained weights)."""
