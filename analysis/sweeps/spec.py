"""A sweep's specification (a TOML file) and the trials it expands to.

    [sweep]
    sources = ["sample_checkpoints/synthetic"]   # runs to prune (relative to the current directory)
    seeds = [0, 1]                                # every point of the search runs once per seed
    search = "grid"                               # grid: every combination; random: `samples` draws
    samples = 8                                   # random search only
    search_seed = 0                               # random search only: the draws are reproducible

    [fixed]                                       # any PipelineConfig field, the same for every trial
    dry_run = true
    stages = 2

    [grid]                                        # search = "grid": a list of values per field
    criterion = ["dynamics-greedy", "magnitude"]
    ratio = [0.3, 0.5]                            # a per-layer ratio: "rnns.0.l0=0.3,rnns.1.l0=0.5"

    [random]                                      # search = "random": a list to choose from, or a range
    da_l2 = { low = 1e-6, high = 1e-3, log = true }
    epochs_per_stage = { low = 1, high = 3 }      # integers when both ends are

    [[points]]                                    # named points, run besides the search's (optional):
    name = "control-0"                            # the trial's name (with "_seed-K" added)
    ratio = 0.0                                   # the PipelineConfig fields it sets, over [fixed]

    [resources]                                   # per trial
    cpus = 1                                      # CPUs Ray reserves (and torch threads, unless `threads`)
    gpus = 0                                      # GPUs Ray reserves; > 0 runs the trial with --device cuda
    device = "cpu"                                # the prune command's --device (default: cuda when gpus > 0)

    [early_stop]                                  # off unless enabled
    enabled = false
    margin = 0.1        # stop a trial whose stage validation ppl is above (1 + margin) x the median
    min_trials = 3      # ... of at least this many other trials at that stage

    spec = load_spec("benchmarks/sweeps/sample.toml")
    for trial in spec.trials():
        print(trial.name, trial.argv("runs/sweep/trials/" + trial.name))

A trial whose options do not validate is still listed (with its `error`): the sweep reports it as
failed and runs the others.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.errors import DynapruneError, InvalidInputError

SEARCHES = ("grid", "random")
SECTIONS = {"sweep", "fixed", "grid", "random", "points", "resources", "early_stop"}
POINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.=+-]{0,99}")


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0
    threads: int | None = None
    device: str | None = None

    @property
    def torch_threads(self) -> int:
        return self.threads or max(1, int(self.cpus))

    @property
    def torch_device(self) -> str:
        return self.device or ("cuda" if self.gpus > 0 else "cpu")


@dataclass(frozen=True)
class EarlyStop:
    enabled: bool = False
    margin: float = 0.1
    min_trials: int = 3


@dataclass(frozen=True)
class Trial:
    """One prune run of the sweep: `options` are the PipelineConfig fields it sets (fixed, searched
    and the seed); `config` is None and `error` says why when they do not validate."""

    name: str
    source: str
    options: dict[str, Any]
    varied: dict[str, Any]
    config: Any = None
    error: str | None = None

    def argv(self, out: str | Path, *, source: str | None = None) -> list[str]:
        """`dynaprune prune ...` arguments (without the program name) that run this trial into `out`."""
        from analysis.cli.prune import job_args

        if self.config is None:
            raise InvalidInputError(f"trial {self.name} has invalid options: {self.error}")
        return job_args(source or self.source, out, self.config)


@dataclass
class SweepSpec:
    sources: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    search: str = "grid"
    samples: int = 0
    search_seed: int = 0
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    named_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    path: Path | None = None

    def points(self) -> list[dict[str, Any]]:
        """The searched values of each point, in a fixed order (none when the spec only names points)."""
        if not self.space:
            return [] if self.named_points else [{}]
        if self.search == "grid":
            names = list(self.space)
            return [dict(zip(names, values)) for values in itertools.product(*(self.space[n] for n in names))]
        draw = random.Random(self.search_seed)
        return [{name: _draw(draw, domain) for name, domain in self.space.items()} for _ in range(self.samples)]

    def trials(self) -> list[Trial]:
        """Every trial: source x point x seed. Names are made from the values, so they stay the same
        when the sweep runs again (that is how a finished trial is recognised)."""
        from analysis.pruning.config import PipelineConfig

        trials, seen = [], set()
        points = [(None, point) for point in self.points()] + list(self.named_points.items())
        for source in self.sources:
            for label, point in points:
                for seed in self.seeds:
                    source_part = {"source": Path(source).name} if len(self.sources) > 1 else {}
                    varied = {**source_part, **point, "seed": seed}
                    options = {**self.fixed, **point, "seed": seed}
                    name = trial_name(varied) if label is None else trial_name(
                        {**source_part, "seed": seed}, prefix=label)
                    if name in seen:
                        continue  # a random search drew the same point twice
                    seen.add(name)
                    config, error = None, None
                    try:
                        config = PipelineConfig(**options).validate()
                    except (DynapruneError, TypeError, ValueError) as problem:
                        error = str(problem)
                    trials.append(Trial(name, source, options, varied, config, error))
        return trials


def trial_name(varied: dict[str, Any], prefix: str | None = None) -> str:
    """A folder name from the values that vary: "criterion-magnitude_ratio-0.5_seed-0"; a named point's
    name comes first instead of its values: "control-0_seed-0"."""
    parts = [prefix] if prefix else []
    for key, value in varied.items():
        if isinstance(value, dict):
            value = "+".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{key}-{value}")
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", "_".join(parts))[:200]


def _draw(draw: random.Random, domain):
    if isinstance(domain, list):
        return domain[draw.randrange(len(domain))]
    low, high = domain["low"], domain["high"]
    if isinstance(low, int) and isinstance(high, int) and not domain.get("log"):
        return draw.randint(low, high)
    if domain.get("log"):
        return math.exp(draw.uniform(math.log(low), math.log(high)))
    return draw.uniform(low, high)


def _pipeline_fields() -> dict[str, dataclasses.Field]:
    from analysis.pruning.config import PipelineConfig

    return {f.name: f for f in dataclasses.fields(PipelineConfig)}


def _option_value(name: str, value: Any, where: str) -> Any:
    """A TOML value as the PipelineConfig field wants it: strings are read as on the command line
    (a per-layer ratio "rnns.0.l0=0.3,...", a horizon "inf", "none")."""
    from analysis.pruning.config import PipelineConfig
    from analysis.utils.options import value_parser

    fields = _pipeline_fields()
    if name not in fields:
        raise InvalidInputError(f"{where}: {name!r} is not a prune option; choose from {', '.join(fields)}")
    if isinstance(value, str) and (fields[name].metadata.get("parse") or value.lower() == "none"):
        try:
            return value_parser(PipelineConfig, fields[name])(value)
        except ValueError as error:
            raise InvalidInputError(f"{where}: {name} = {value!r}: {error}") from None
    return value


def parse_spec(data: dict, path: Path | None = None) -> SweepSpec:
    """A SweepSpec from the TOML document's tables (validated; trial options are checked per trial)."""
    unknown = set(data) - SECTIONS
    if unknown:
        raise InvalidInputError(f"unknown table(s) {sorted(unknown)} in the sweep spec; use {sorted(SECTIONS)}")
    sweep = dict(data.get("sweep", {}))
    sources = sweep.pop("sources", None)
    if isinstance(sources, str):
        sources = [sources]
    if not sources or not all(isinstance(s, str) and s for s in sources):
        raise InvalidInputError("[sweep] sources: give the runs to prune, e.g. sources = [\"runs/ptb-small\"]")
    seeds = sweep.pop("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise InvalidInputError(f"[sweep] seeds must be whole numbers >= 0, got {seeds!r}")
    search = sweep.pop("search", "grid")
    if search not in SEARCHES:
        raise InvalidInputError(f"[sweep] search must be one of {SEARCHES}, got {search!r}")
    samples, search_seed = sweep.pop("samples", 0), sweep.pop("search_seed", 0)
    if sweep:
        raise InvalidInputError(f"[sweep]: unknown key(s) {sorted(sweep)}")
    fixed = {name: _option_value(name, value, "[fixed]") for name, value in data.get("fixed", {}).items()}
    space: dict[str, Any] = {}
    if search == "grid":
        if data.get("random"):
            raise InvalidInputError("a [random] table needs search = \"random\" in [sweep]")
        for name, values in data.get("grid", {}).items():
            if not isinstance(values, list) or not values:
                raise InvalidInputError(f"[grid] {name}: give a non-empty list of values")
            space[name] = [_option_value(name, value, "[grid]") for value in values]
    else:
        if data.get("grid"):
            raise InvalidInputError("a [grid] table needs search = \"grid\" in [sweep]")
        if not isinstance(samples, int) or samples < 1:
            raise InvalidInputError(f"[sweep] samples: a random search needs samples >= 1, got {samples!r}")
        for name, domain in data.get("random", {}).items():
            if isinstance(domain, list) and domain:
                space[name] = [_option_value(name, value, "[random]") for value in domain]
            elif isinstance(domain, dict) and {"low", "high"} <= set(domain) <= {"low", "high", "log"} \
                    and domain["low"] <= domain["high"] and (not domain.get("log") or domain["low"] > 0):
                _option_value(name, domain["low"], "[random]")
                space[name] = dict(domain)
            else:
                raise InvalidInputError(f"[random] {name}: give a list of values or {{low = A, high = B, log = "
                                        f"true|false}} with A <= B (A > 0 with log)")
    named_points = _named_points(data.get("points", []))
    if "seed" in space or "seed" in fixed or any("seed" in point for point in named_points.values()):
        raise InvalidInputError("give seeds in [sweep] seeds, not as a searched or fixed option")
    overlap = set(space) & set(fixed)
    if overlap:
        raise InvalidInputError(f"{sorted(overlap)} both fixed and searched; choose one")
    try:
        resources = Resources(**data.get("resources", {}))
        early_stop = EarlyStop(**data.get("early_stop", {}))
    except TypeError as error:
        raise InvalidInputError(f"[resources] / [early_stop]: {error}") from None
    if not resources.cpus > 0 or resources.gpus < 0 or (resources.threads is not None and resources.threads < 1):
        raise InvalidInputError(f"[resources]: cpus must be > 0, gpus >= 0, threads >= 1; got {resources}")
    if early_stop.margin < 0 or early_stop.min_trials < 1:
        raise InvalidInputError(f"[early_stop]: margin must be >= 0 and min_trials >= 1; got {early_stop}")
    return SweepSpec(sources=list(sources), seeds=list(seeds), search=search, samples=samples,
                     search_seed=search_seed, fixed=fixed, space=space, named_points=named_points,
                     resources=resources, early_stop=early_stop, path=path)


def _named_points(entries) -> dict[str, dict[str, Any]]:
    """The [[points]] tables: {name: options}, in the spec's order; names unique and usable as folder names."""
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise InvalidInputError("[[points]]: give each point as a table with a name and its options")
    points: dict[str, dict[str, Any]] = {}
    for entry in entries:
        options = dict(entry)
        name = options.pop("name", None)
        if not isinstance(name, str) or not POINT_NAME.fullmatch(name):
            raise InvalidInputError(f"[[points]]: each point needs a name of letters, digits and . = + - "
                                    f"(at most 100), got {name!r}")
        if name in points:
            raise InvalidInputError(f"[[points]]: the name {name!r} is given twice")
        points[name] = {key: _option_value(key, value, f"[[points]] {name}") for key, value in options.items()}
    return points


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"sweep spec {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"sweep spec {path} is not valid TOML: {error}") from None
    return parse_spec(data, path)
