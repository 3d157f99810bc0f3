"""Errors a user can act on.

Every problem caused by input (a file, a gene table, a checkpoint directory, a config) raises a
subclass of :class:`SpgptError` whose message says what was wrong and what to do. The CLI prints
such messages without a traceback; the napari plugin shows them as notifications.
"""

from __future__ import annotations


class SpgptError(Exception):
    """Base class: a problem the user can fix. The message names the problem and the fix."""


class InputError(SpgptError, ValueError):
    """The data given (file, matrix, genes, coordinates, parameters) cannot be used as is."""


class CheckpointError(SpgptError):
    """A model directory or checkpoint file is missing, incomplete or inconsistent."""


class ConfigError(SpgptError, ValueError):
    """A configuration has unknown keys or impossible values."""


class Cancelled(SpgptError):
    """Long work was cancelled by the user (GUI Cancel button, Ctrl-C)."""
