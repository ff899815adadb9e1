"""Rules on the load generator's own load (see analysis.rules)."""

from __future__ import annotations

from analysis.formatting import num, pct
from analysis.records import WARNING, Findings, Recommendation


def load_generator_busy(f: Findings) -> Recommendation | None:
    """Loop lag p99 > loadgen_lag_p99_ms or CPU > loadgen_cpu_share of the box -> warning.

    Both are Locust's own (loadgen.csv): its delays are then in the measured times.
    """
    g, cfg = f.loadgen, f.config
    if g is None:
        return None
    problems = []
    if g.lag_p99_ms > cfg.loadgen_lag_p99_ms:
        problems.append(
            f"its event loop ran {num(g.lag_p99_ms, 1)} ms late at p99 (limit "
            f"{num(cfg.loadgen_lag_p99_ms, 0)} ms; max {num(g.lag_max_ms, 0)} ms), and every "
            "response time, TTFT and chunk gap it recorded can be that much too long")
    if g.box_share > cfg.loadgen_cpu_share:
        problems.append(
            f"it used {pct(g.box_share)} of the box's {g.box_cores} cores (limit "
            f"{pct(cfg.loadgen_cpu_share, 0)}), CPU the server did not get")
    if not problems:
        return None
    return Recommendation("load_generator_busy", WARNING, (
        "The load generator may have skewed this run: " + "; ".join(problems) + ". Run Locust "
        "on another machine, or with --processes to spread users over cores, or with fewer "
        "users per process."))


RULES = [load_generator_busy]
