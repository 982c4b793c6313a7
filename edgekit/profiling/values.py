"""The typed values of a profile: what to measure (``ProfileSpec`` -> ``Case``) and what was measured.

Every value round-trips through plain JSON (``to_dict`` / ``from_dict``) because results are produced on the
device and read back on the host.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

from ..errors import EdgekitError

PP = "pp"  # prefill: process n prompt tokens in batches
TG = "tg"  # decode: generate n tokens one at a time
STEP = "step"  # solver: one supervision step for a batch of n puzzles (rate: puzzle-steps/s)
SOLVE = "solve"  # solver: solve a batch of n puzzles with early halting (rate: puzzles/s)
SOLVER_BATCHES = (1, 16)  # solver bundles are measured at batch 1 and at batch 16


@dataclass(frozen=True)
class Case:
    """One llama-bench test: ``pp512`` or ``tg128``, optionally with ``depth`` tokens already in the cache."""

    kind: str
    n: int
    depth: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}{self.n}" + (f" @ d{self.depth}" if self.depth else "")

    @property
    def context(self) -> int:
        return self.depth + self.n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ProfileSpec:
    """llama-bench's parameters: -p, -n, -d, -t, -r, warm-up.  0 in ``prompts``/``gens`` skips that test kind.
    ``threads`` None means the engine's default (all cores in edgekit's wrappers)."""

    prompts: tuple[int, ...] = (512,)
    gens: tuple[int, ...] = (128,)
    depths: tuple[int, ...] = (0,)
    threads: tuple[int | None, ...] = (None,)
    repetitions: int = 5
    warmup: bool = True
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.repetitions < 1:
            raise EdgekitError(f"repetitions must be at least 1 (got {self.repetitions})")
        for name, values in (("-p", self.prompts), ("-n", self.gens), ("-d", self.depths)):
            if not values or any(v < 0 for v in values):
                raise EdgekitError(f"{name} takes non-negative token counts (got {list(values)})")
        if any(t is not None and t < 1 for t in self.threads):
            raise EdgekitError(f"-t takes positive thread counts (got {list(self.threads)})")
        if not self.cases():
            raise EdgekitError("nothing to measure: -p and -n are both 0")

    def cases(self) -> list[Case]:
        """In llama-bench's order: for each depth, the prefill tests, then the decode tests."""
        out = []
        for d in self.depths:
            out += [Case(PP, p, d) for p in self.prompts if p > 0]
            out += [Case(TG, n, d) for n in self.gens if n > 0]
        return out

    def solver_cases(self) -> list[Case]:
        """The tests of a solver bundle: a step and a whole solve, at each of ``SOLVER_BATCHES``."""
        return [Case(kind, b) for b in SOLVER_BATCHES for kind in (STEP, SOLVE)]

    @property
    def max_context(self) -> int:
        return max(c.context for c in self.cases())

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProfileSpec":
        tuples = {"prompts", "gens", "depths", "threads"}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items()})


@dataclass(frozen=True)
class Sample:
    """One repetition: the engine's own time for the work, and the wall-clock time around the call."""

    engine_s: float
    wall_s: float


@dataclass(frozen=True)
class CaseResult:
    case: Case
    threads: int | None
    samples: tuple[Sample, ...]
    bytes_per_token: int | None = None  # weights (+ KV cache) read per decoded token
    bandwidth_gbs: float | None = None  # the device's measured read bandwidth at these threads
    steps_mean: float | None = None  # solve tests: supervision steps until every puzzle halted, mean

    @property
    def rates(self) -> list[float]:
        return [self.case.n / s.engine_s for s in self.samples if s.engine_s > 0]

    @property
    def tps_mean(self) -> float:
        return statistics.fmean(self.rates) if self.rates else 0.0

    @property
    def tps_std(self) -> float:
        """Sample standard deviation of the per-repetition rates, as llama-bench reports it."""
        return statistics.stdev(self.rates) if len(self.rates) > 1 else 0.0

    def tps_text(self, digits: int = 1) -> str:
        """``mean ± stddev`` tokens/s; the mean alone for one repetition (a spread of one sample is not 0)."""
        return tps_text(self.tps_mean, self.tps_std, len(self.rates), digits)

    @property
    def wall_tps_mean(self) -> float:
        rates = [self.case.n / s.wall_s for s in self.samples if s.wall_s > 0]
        return statistics.fmean(rates) if rates else 0.0

    @property
    def ttft_s(self) -> float | None:
        """Prefill tests only: wall time from handing over the prompt to having the first token's logits."""
        if self.case.kind != PP or not self.samples:
            return None
        return statistics.fmean(s.wall_s for s in self.samples)

    @property
    def roofline_tps(self) -> float | None:
        """The decode rate memory bandwidth allows: bandwidth / bytes read per token."""
        if self.case.kind != TG or not self.bytes_per_token or not self.bandwidth_gbs:
            return None
        return self.bandwidth_gbs * 1e9 / self.bytes_per_token

    @property
    def roofline_fraction(self) -> float | None:
        limit = self.roofline_tps
        return self.tps_mean / limit if limit else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "case": self.case.to_dict(),
            "name": self.case.name,
            "threads": self.threads,
            "samples": [asdict(s) for s in self.samples],
            "bytes_per_token": self.bytes_per_token,
            "bandwidth_gbs": self.bandwidth_gbs,
            "steps_mean": self.steps_mean,
            # derived values, for readers of the JSON that do not recompute them
            "tps_mean": self.tps_mean,
            "tps_std": self.tps_std,
            "wall_tps_mean": self.wall_tps_mean,
            "ttft_s": self.ttft_s,
            "roofline_tps": self.roofline_tps,
            "roofline_fraction": self.roofline_fraction,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CaseResult":
        return cls(
            case=Case(**d["case"]),
            threads=d["threads"],
            samples=tuple(Sample(**s) for s in d["samples"]),
            bytes_per_token=d.get("bytes_per_token"),
            bandwidth_gbs=d.get("bandwidth_gbs"),
            steps_mean=d.get("steps_mean"),
        )


@dataclass(frozen=True)
class BundleResult:
    """Everything measured for one bundle at one thread count, in one fresh process on the device."""

    bundle: str  # the bundle's path on the host (what the user named)
    format: str
    quant: str
    engine: str
    threads: int | None
    file_size: int  # bytes of all bundle files
    weight_bytes: int | None = None
    load_s: float | None = None
    peak_rss_mb: float | None = None
    cases: tuple[CaseResult, ...] = ()
    error: str | None = None  # why the run stopped early (brought back from the device)
    partial: bool = False  # not every case finished (interrupted, crashed or failed)

    @property
    def label(self) -> str:
        return f"{self.format}/{self.quant}" + (f" t{self.threads}" if self.threads else "")

    def with_case(self, result: CaseResult) -> "BundleResult":
        return replace(self, cases=self.cases + (result,))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cases"] = [c.to_dict() for c in self.cases]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BundleResult":
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        fields["cases"] = tuple(CaseResult.from_dict(c) for c in d.get("cases", ()))
        return cls(**fields)


@dataclass(frozen=True)
class ProfileReport:
    device: str
    inventory: Mapping[str, Any]
    spec: ProfileSpec
    results: tuple[BundleResult, ...] = ()
    interrupted: bool = False
    edgekit_version: str = ""

    @property
    def partial(self) -> bool:
        return self.interrupted or any(r.partial for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "inventory": dict(self.inventory),
            "spec": self.spec.to_dict(),
            "results": [r.to_dict() for r in self.results],
            "interrupted": self.interrupted,
            "partial": self.partial,
            "edgekit_version": self.edgekit_version,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProfileReport":
        return cls(
            device=d["device"],
            inventory=d.get("inventory", {}),
            spec=ProfileSpec.from_dict(d["spec"]),
            results=tuple(BundleResult.from_dict(r) for r in d.get("results", ())),
            interrupted=bool(d.get("interrupted")),
            edgekit_version=d.get("edgekit_version", ""),
        )


def parse_counts(text: str, name: str, allow_zero: bool = True) -> tuple[int, ...]:
    """``"128,512"`` -> (128, 512), as llama-bench's comma lists (CLI edge only)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EdgekitError(f"{name} takes comma-separated integers, e.g. 128,512 (got {text!r})") from None
    if not values or any(v < 0 or (v == 0 and not allow_zero) for v in values):
        raise EdgekitError(f"{name} takes {'non-negative' if allow_zero else 'positive'} integers (got {text!r})")
    return values


__all__ = ["Case", "ProfileSpec", "Sample", "CaseResult", "BundleResult", "ProfileReport", "parse_counts", "PP", "TG"]


def tps_text(mean: float, std: float, n: int, digits: int = 1) -> str:
    """A rate as the tables print it: ``mean ± stddev``, or the mean alone when ``n`` < 2 samples."""
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")
