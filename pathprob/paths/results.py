"""Result types: small dataclasses of host numpy arrays with a readable repr and ``to_json``."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from pathprob.data.tokenizer import Tokenizer
from pathprob.files import dumps, jsonable


NO_VALUE = "—"  # a table cell with no value (None): not measured, not zero


def format_interval(lower: float | None, upper: float | None, digits: int = 6) -> str:
    """``[lower, upper]`` with ``digits`` significant digits, or more where fewer would print unequal bounds as
    equal (a random estimate's interval never reads as zero-width); None or NaN as ``NO_VALUE``."""
    if lower is None or upper is None or math.isnan(lower) or math.isnan(upper):
        return NO_VALUE
    for d in range(digits, 18):
        low, high = f"{lower:.{d}g}", f"{upper:.{d}g}"
        if low != high or lower == upper:
            break
    return f"[{low}, {high}]"


def format_estimate(est) -> str:
    """An ``Estimate`` in a table cell: the value when it is proven (exact, or bounds that meet); ``bounded
    [lower, upper]`` for proven bounds (no midpoint: it can be far from the truth); ``value [lower, upper]``
    for a confidence interval, never printed zero-width (``format_interval``), marked when its diagnostics
    distrust it."""
    if est.exact or (est.level is None and est.lower == est.upper):
        return f"{est.value:.6g}"
    if est.level is None:
        return f"bounded {format_interval(est.lower, est.upper, 4)}"
    return f"{est.value:.4g} {format_interval(est.lower, est.upper, 4)}" + ("" if est.reliable else " (unreliable)")


def log1mexp(log_x: float) -> float:
    """log(1 - exp(log_x)) for log_x <= 0, accurate near both ends."""
    if log_x >= 0.0:
        return -math.inf
    return math.log(-math.expm1(log_x)) if log_x > -0.693 else math.log1p(-math.exp(log_x))


def logsumexp64(values) -> float:
    """Host float64 log-sum-exp in a fixed order; -inf for no values."""
    values = np.asarray(values, np.float64).ravel()
    if values.size == 0:
        return -math.inf
    top = values.max()
    if not np.isfinite(top):
        return float(top)
    return float(top + np.log(np.sum(np.exp(values - top))))


def path_lengths(tokens_NL: np.ndarray) -> np.ndarray:
    """int32[N]: tokens per row of a -1-padded token table.

    Column by column: numpy's reductions along a short last axis are about 20x slower.
    """
    lengths = np.zeros(tokens_NL.shape[0], np.int32)
    for column in tokens_NL.T:
        lengths += column >= 0
    return lengths


@dataclasses.dataclass(frozen=True, repr=False)
class PathTable:
    """Listed continuation paths with exact log-probabilities and the certified remainder.

    ``tokens`` int32[N, max_new] padded with -1, ``lengths`` int32[N], ``logp``
    float64[N] (sorted, most probable first), ``eos`` bool[N]. ``log_covered`` is
    the log of the listed mass and ``log_remaining`` the log of the mass of every
    path not listed: exp(log_covered) + exp(log_remaining) = 1 up to rounding.
    ``stats`` holds the work done (expanded nodes, seconds, ...) and, for
    ``top_k``, the certificate ``log_best_unexpanded``.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    logp: np.ndarray
    eos: np.ndarray
    log_covered: float
    log_remaining: float
    tokenizer: Tokenizer
    max_new: int
    stats: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.logp.shape[0])

    @property
    def probs(self) -> np.ndarray:
        return np.exp(self.logp)

    @property
    def remaining(self) -> float:
        """The unlisted mass, -expm1(log_covered), so small remainders keep their digits.

        Clipped at 0: with nothing pruned the listed mass can exceed 1 by the float32
        rounding of the per-token log-probabilities (about 1e-7).
        """
        return max(0.0, -math.expm1(self.log_covered))

    def texts(self, *, with_eos: bool = False) -> list[str]:
        """The decoded continuations (EOS dropped unless ``with_eos``)."""
        eos_id = self.tokenizer.eos_id
        return [
            self.tokenizer.decode([t for t in row[:n] if with_eos or t != eos_id])
            for row, n in zip(self.tokens, self.lengths)
        ]

    def top(self, n: int) -> PathTable:
        """The ``n`` most probable listed paths; the rest join the remainder."""
        kept = slice(0, min(n, len(self)))
        log_covered = logsumexp64(self.logp[kept])
        return dataclasses.replace(
            self, tokens=self.tokens[kept], lengths=self.lengths[kept], logp=self.logp[kept], eos=self.eos[kept],
            log_covered=log_covered, log_remaining=log1mexp(log_covered) if len(self) > n else self.log_remaining,
        )

    def to_dict(self) -> dict:
        return jsonable({
            "paths": [
                {"text": text, "tokens": row[:n].tolist(), "logp": float(lp), "p": float(math.exp(lp)), "eos": bool(e)}
                for text, row, n, lp, e in zip(self.texts(with_eos=True), self.tokens, self.lengths, self.logp, self.eos)
            ],
            "log_covered": self.log_covered, "log_remaining": self.log_remaining,
            "covered": math.exp(self.log_covered), "remaining": self.remaining, "max_new": self.max_new,
            "stats": self.stats,
        })

    def to_json(self, **kwargs) -> str:
        return dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        lines = [f"PathTable({len(self)} paths, max_new={self.max_new}, covered={math.exp(self.log_covered):.6g}, "
                 f"remaining={self.remaining:.3g})"]
        cumulative = 0.0
        for text, lp in list(zip(self.texts(with_eos=True), self.logp))[:20]:
            cumulative += math.exp(lp)
            lines.append(f"  {math.exp(lp):10.6f}  {cumulative:8.6f}  {text!r}")
        if len(self) > 20:
            lines.append(f"  ... {len(self) - 20} more")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A number with its uncertainty.

    ``exact`` is True when ``lower == upper`` is a proof; otherwise
    ``[lower, upper]`` is a proven bound (exact methods with pruning; ``level`` None)
    or a confidence interval at ``level`` (Monte-Carlo methods; ``n`` samples,
    ``stderr``, effective sample size ``ess``, NaN where undefined).

    ``reliable`` is False when a diagnostic says the interval is not to be trusted
    (``reason`` says which: too few effective samples, a heavy-tailed weight
    distribution, no hits); ``interrupted`` when the run was stopped early and the
    estimate holds the samples drawn so far. ``seed`` is the integer seed when one was
    given and ``key_data`` the raw data of the key used (reproducible either way).
    """

    value: float
    lower: float
    upper: float
    method: str
    n: int = 0
    stderr: float = 0.0
    ess: float = math.nan
    exact: bool = False
    seconds: float = 0.0
    level: float | None = None  # confidence level of [lower, upper]; None for proven bounds
    seed: int | None = None
    key_data: tuple[int, ...] = ()
    reliable: bool = True
    reason: str = ""
    interrupted: bool = False
    details: dict = dataclasses.field(default_factory=dict)

    @property
    def kind(self) -> str:
        """What [lower, upper] is: "exact", "proven bounds" or "95% interval"."""
        if self.exact:
            return "exact"
        return "proven bounds" if self.level is None else f"{100 * self.level:g}% interval"

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))

    def to_json(self, **kwargs) -> str:
        return dumps(self.to_dict(), **kwargs)

    def __repr__(self) -> str:
        if self.exact:
            return f"Estimate({self.value:.10g}, exact, method={self.method!r})"
        extra = f", n={self.n}, ess={self.ess:.4g}" if self.n else ""
        flags = ("" if self.reliable else f", UNRELIABLE: {self.reason}") + (", interrupted" if self.interrupted else "")
        return (f"Estimate({self.value:.6g} in [{self.lower:.6g}, {self.upper:.6g}] ({self.kind}), "
                f"method={self.method!r}{extra}{flags})")
