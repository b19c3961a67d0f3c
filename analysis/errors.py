"""Errors the library raises on bad input. Every message names the file or layer and says what to do."""


class DynapruneError(Exception):
    """Base class for every error dynaprune raises on purpose."""


class InvalidInputError(DynapruneError, ValueError):
    """An argument or array the caller passed is unusable (wrong shape, NaN, out of range)."""


class CheckpointError(InvalidInputError):
    """A checkpoint or trajectory on disk cannot be read: missing, truncated, inconsistent, not a checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint would need to execute code (arbitrary pickled objects) to load; it was refused unread."""


class NoRecurrentLayerError(CheckpointError):
    """A state dict holds no nn.LSTM / nn.GRU / nn.RNN parameters."""
