"""Dataclass configs that travel in checkpoints and run files as plain dicts (ModelConfig,
TrainConfig, PipelineConfig): one to_dict / from_dict, refusing keys the class does not know."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from analysis.errors import InvalidInputError


class PlainConfig:
    """Mixin for a dataclass; `config_name` names it in error messages."""

    config_name = "config"
    # keys that files written by older code use -> today's names; from_dict reads either
    renamed_keys: dict[str, str] = {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = cls.with_current_names(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidInputError(
                f"unknown {cls.config_name} keys {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**cls._coerced(dict(data)))

    @classmethod
    def with_current_names(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {cls.renamed_keys.get(key, key): value for key, value in data.items()}

    @classmethod
    def _coerced(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Hook for normalising values read back from JSON."""
        return values


MAX_SEED = 2**63 - 1  # torch.manual_seed takes up to 2^64 - 1, numpy's generators up to 2^63 - 1 here


def check_seed(seed: Any) -> int:
    """A random seed: a whole number in [0, 2^63); InvalidInputError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(f"seed must be a whole number from 0 to 2^63 - 1, got {seed!r}")
    return seed
