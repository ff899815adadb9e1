"""Token-length distributions: ``--prompt-tokens`` and ``--output-tokens`` as a seeded draw.

A distribution is written ``KIND:key=value,...`` (or ``fixed:N``):

==============================================  ========================================
``fixed:128``                                   always 128
``uniform:min=16,max=64``                       an integer uniformly in [min, max]
``normal:mean=200,sd=50,min=8,max=900``         a normal draw, rounded, clipped to bounds
``lognormal:mean=200,sd=80,min=8,max=900``      a lognormal with that mean and sd (of the
                                                lengths, not of their log), rounded, clipped
==============================================  ========================================

``min`` defaults to 1 and ``max`` to 4096 for the unbounded kinds. Draws come from the
``random.Random`` the caller seeds, so a seed gives the same lengths on every machine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

KINDS = ("fixed", "uniform", "normal", "lognormal")
_KEYS = {"fixed": {"value"}, "uniform": {"min", "max"},
         "normal": {"mean", "sd", "min", "max"}, "lognormal": {"mean", "sd", "min", "max"}}
USAGE = ("use fixed:N, uniform:min=A,max=B, normal:mean=M,sd=S[,min=A,max=B] or "
         "lognormal:mean=M,sd=S[,min=A,max=B] (lengths in tokens)")


@dataclass(frozen=True)
class LengthDistribution:
    """A distribution of token counts, bounded to [low, high]."""

    kind: str
    mean: float
    sd: float
    low: int
    high: int

    def draw(self, rng: random.Random) -> int:
        """One length from ``rng``, within [low, high]."""
        if self.kind == "fixed":
            return self.low
        if self.kind == "uniform":
            return rng.randint(self.low, self.high)
        if self.kind == "normal":
            value = rng.gauss(self.mean, self.sd)
        else:  # lognormal: the log's parameters that give this mean and sd
            sigma2 = math.log(1.0 + (self.sd / self.mean) ** 2)
            value = rng.lognormvariate(math.log(self.mean) - sigma2 / 2.0, math.sqrt(sigma2))
        return min(self.high, max(self.low, round(value)))

    def spec(self) -> str:
        """The option text that gives this distribution back (for run.json)."""
        if self.kind == "fixed":
            return f"fixed:{self.low}"
        if self.kind == "uniform":
            return f"uniform:min={self.low},max={self.high}"
        return f"{self.kind}:mean={self.mean:g},sd={self.sd:g},min={self.low},max={self.high}"


def parse_lengths(text: str) -> LengthDistribution:
    """Parse ``KIND:key=value,...`` (see the module docstring); ValueError names the forms."""
    kind, _, rest = text.strip().partition(":")
    if kind not in KINDS or not rest:
        raise ValueError(f"length distribution {text!r}: {USAGE}")
    try:
        if kind == "fixed" and "=" not in rest:
            values = {"value": float(rest)}
        else:
            pairs = (item.split("=", 1) for item in rest.split(",") if item.strip())
            values = {k.strip(): float(v) for k, v in pairs}
    except ValueError:
        raise ValueError(f"length distribution {text!r}: {USAGE}") from None
    unknown = set(values) - _KEYS[kind]
    if unknown:
        raise ValueError(f"length distribution {text!r}: unknown {sorted(unknown)}; {USAGE}")
    return _checked(kind, values, text)


def _checked(kind: str, values: dict[str, float], text: str) -> LengthDistribution:
    if kind == "fixed":
        n = int(values["value"])
        if n < 1:
            raise ValueError(f"length distribution {text!r}: the length must be >= 1")
        return LengthDistribution(kind, n, 0.0, n, n)
    low, high = int(values.get("min", 1)), int(values.get("max", 4096))
    if kind == "uniform" and not {"min", "max"} <= set(values):
        raise ValueError(f"length distribution {text!r}: uniform needs min and max; {USAGE}")
    if not 1 <= low <= high:
        raise ValueError(f"length distribution {text!r}: need 1 <= min <= max")
    if kind == "uniform":
        return LengthDistribution(kind, (low + high) / 2.0, 0.0, low, high)
    if "mean" not in values or "sd" not in values or values["mean"] <= 0 or values["sd"] < 0:
        raise ValueError(f"length distribution {text!r}: {kind} needs mean > 0 and sd >= 0")
    return LengthDistribution(kind, values["mean"], values["sd"], low, high)
