"""Hardware facts, the kernel-path rule, and the load generator's section, on hand-built runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from analysis_run_builders import START_TS, request_row, write_csv

from analysis.cli import main
from analysis.config import AnalysisConfig
from analysis.findings import build_findings
from analysis.readers import LOADGEN_COLUMNS
from analysis.report import render_markdown
from analysis.rules_machine import kernel_path, load_generator_busy
from analysis.run import load_run

EPYC = {"cores": 2, "ram_gb": 16, "cpu_model": "AMD EPYC 7B13", "cpu_vendor": "AuthenticAMD",
        "isa": ["avx2", "fma", "f16c"], "torch_cpu_capability": "AVX2", "blas": "MKL 2024.2"}
XEON = {"cores": 2, "ram_gb": 16, "cpu_model": "Intel(R) Xeon(R) Platinum 8488C",
        "cpu_vendor": "GenuineIntel",
        "isa": ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "fma", "f16c"],
        "torch_cpu_capability": "AVX512", "blas": "MKL 2024.2"}


def kernels(chosen: str, int8_ms: float = 90.0) -> dict:
    return {"kernels": {"chosen": chosen, "allow_int8": True, "table": [
        {"precision": "float32", "batch_1_ms": 210.0, "batch_max_ms": 630.0, "max_batch": 8},
        {"precision": "bfloat16", "batch_1_ms": 400.0, "batch_max_ms": 1200.0, "max_batch": 8},
        {"precision": "int8", "batch_1_ms": 40.0, "batch_max_ms": int8_ms, "max_batch": 8}]}}


REQUESTS = [request_row(t) for t in range(10)]  # load from 0 s to 10 s


def test_compare_of_two_cpus_lists_the_hardware_that_differs(write_run, tmp_path) -> None:
    epyc = write_run("epyc", run={"label": "epyc", "host": EPYC, "dtype": "float32",
                                  "server": kernels("float32")}, requests=REQUESTS)
    xeon = write_run("xeon", run={"label": "xeon", "host": XEON, "dtype": "bfloat16",
                                  "server": kernels("bfloat16")}, requests=REQUESTS)

    assert main(["compare", str(epyc), str(xeon), "--out", str(tmp_path / "cmp")]) == 0

    text = (tmp_path / "cmp" / "comparison.md").read_text()
    differ = text.split("## Settings that differ")[1].split("\n## ")[0]
    assert "**Hardware differs**" in differ
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in differ.splitlines() if line.startswith("| ")}
    assert rows["host.cpu_model"] == ["AMD EPYC 7B13", "Intel(R) Xeon(R) Platinum 8488C"]
    assert rows["host.isa"] == ["avx2 fma f16c",
                                "avx2 avx512f avx512_bf16 amx_bf16 amx_int8 fma f16c"]
    assert rows["host.torch_cpu_capability"] == ["AVX2", "AVX512"]
    assert rows["host.cpu_vendor"] == ["AuthenticAMD", "GenuineIntel"]
    assert rows["server.kernels.chosen"] == ["float32", "bfloat16"]
    assert "host.blas" not in rows  # the same BLAS on both: not a difference


def test_compare_on_one_cpu_says_nothing_about_hardware(write_run, tmp_path) -> None:
    one = write_run("one", run={"label": "one", "host": EPYC}, requests=REQUESTS)
    two = write_run("two", run={"label": "two", "host": EPYC, "workers": 1}, requests=REQUESTS)

    assert main(["compare", str(one), str(two), "--out", str(tmp_path / "cmp")]) == 0

    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "Hardware differs" not in text and "| workers |" in text


def test_report_header_names_the_cpu_and_the_chosen_precision(write_run) -> None:
    folder = write_run(run={"host": EPYC, "dtype": "int8", "server": kernels("int8")},
                       requests=REQUESTS)

    text = render_markdown(build_findings(load_run(folder), AnalysisConfig()))

    header = text.split("\n\n")[1]
    assert header == ("Host CPU: **AMD EPYC 7B13** (ISA avx2 fma f16c; torch kernels AVX2; "
                      "BLAS MKL 2024.2); precision chosen at startup: **int8**.")
    kernel_table = text.split("## Hardware and kernel path")[1].split("\n## ")[0]
    assert "| int8 | 40.0 | 90.0 | 8 | yes |" in kernel_table


def test_report_of_an_older_run_says_what_was_not_recorded(write_run) -> None:
    text = render_markdown(build_findings(load_run(write_run(run={}, requests=REQUESTS)),
                                          AnalysisConfig()))

    assert "Host CPU not recorded" in text
    assert "The server reported no kernel table" in text
    assert "## Load generator\n\nNot recorded" in text


@pytest.mark.parametrize(("served", "severity", "says"), [
    ("float32", "warning", "int8 decodes 7.0x faster than float32 on this CPU (AMD EPYC 7B13, "
                           "torch kernels AVX2) at batch 8 (90 vs 630 ms per decode step), yet "
                           "the server served float32: set DTYPE=int8 (or DTYPE=auto with "
                           "ALLOW_INT8=1)."),
    ("int8", "info", "int8 decodes 13.3x faster than bfloat16 at batch 8"),
])
def test_a_slow_kernel_path_is_a_finding(write_run, served, severity, says) -> None:
    folder = write_run(run={"host": EPYC, "dtype": served, "server": kernels(served)},
                       requests=REQUESTS)

    finding = kernel_path(build_findings(load_run(folder), AnalysisConfig()))

    assert finding.severity == severity and says in finding.text


def test_no_kernel_finding_without_a_spread_or_a_table(write_run) -> None:
    close = write_run("close", run={"host": EPYC, "server": {"kernels": {
        "chosen": "float32", "table": [
            {"precision": "float32", "batch_1_ms": 200.0, "batch_max_ms": 600.0, "max_batch": 8},
            {"precision": "int8", "batch_1_ms": 180.0, "batch_max_ms": 500.0, "max_batch": 8}]}}},
        requests=REQUESTS)
    bare = write_run("bare", run={"host": EPYC}, requests=REQUESTS)

    for folder in (close, bare):
        assert kernel_path(build_findings(load_run(folder), AnalysisConfig())) is None


def loadgen_rows(lag_ms: list[float], cpu_per_s: float, role: str = "local",
                 pid: int = 7) -> list[dict]:
    """One tick a second from t = -5 s to the end of ``lag_ms``: lags from t = 0."""
    rows = []
    for i, t in enumerate(range(-5, len(lag_ms))):
        rows.append({"timestamp": START_TS + t, "elapsed_s": i, "pid": pid, "role": role,
                     "loop_lag_ms": lag_ms[t] if t >= 0 else 500.0,  # before the load
                     "cpu_s": 1.0 + cpu_per_s * i, "cpu_percent": 100 * cpu_per_s, "cores": 2})
    return rows


def test_load_generator_section_and_rule(write_run) -> None:
    # 11 ticks over the load (0..10 s): lags 1..10 ms, then one of 40 ms; 0.1 s CPU per s.
    quiet = write_run("quiet", run={"host": EPYC}, requests=REQUESTS)
    write_csv(quiet / "loadgen.csv", LOADGEN_COLUMNS,
              loadgen_rows([*range(1, 11), 40.0], 0.1))
    busy = write_run("busy", run={"host": EPYC}, requests=REQUESTS)
    write_csv(busy / "loadgen.csv", LOADGEN_COLUMNS,
              loadgen_rows([20.0] * 11, 0.2) + loadgen_rows([1.0] * 11, 0.3, "worker", 8))

    f = build_findings(load_run(quiet), AnalysisConfig())
    g = f.loadgen
    # The load ran from 0 s to 11 s (last request at 9 s + 1 s): ticks before it are left out.
    assert (g.window_s, g.cpu_cores, g.box_share, g.ticks) == pytest.approx((10, 0.1, 0.05, 11))
    assert (g.lag_p50_ms, g.lag_max_ms) == (6.0, 40.0)
    assert g.lag_p99_ms == pytest.approx(10 + 0.9 * 30)  # numpy's linear interpolation
    section = render_markdown(f).split("## Load generator")[1].split("\n## ")[0]
    assert "**5.0% of the box's 2 cores**" in section and "p99 37.0 ms" in section
    assert "**Warning**" in section  # p99 37 ms > 10 ms
    assert "ran 37.0 ms late at p99" in load_generator_busy(f).text

    b = build_findings(load_run(busy), AnalysisConfig()).loadgen
    assert b.box_share == pytest.approx(0.25) and b.lag_p99_ms == pytest.approx(20.0)
    assert {r.role: r.processes for r in b.roles} == {"local": 1, "worker": 1}
    calm = AnalysisConfig(loadgen_lag_p99_ms=50, loadgen_cpu_share=0.5)
    assert load_generator_busy(build_findings(load_run(busy), calm)) is None
    text = load_generator_busy(build_findings(load_run(busy), AnalysisConfig())).text
    assert "25.0% of the box's 2 cores" in text


def test_loadgen_reader_makes_elapsed_from_the_run_start(write_run) -> None:
    folder: Path = write_run(run={}, requests=REQUESTS)
    write_csv(folder / "loadgen.csv", LOADGEN_COLUMNS, loadgen_rows([1.0] * 3, 0.1))

    run = load_run(folder)

    assert run.loadgen["elapsed_s"].tolist() == [-5, -4, -3, -2, -1, 0, 1, 2]
    assert not any("loadgen" in note for note in run.notes)


def no_int8_kernels(chosen: str = "float32+onednn") -> dict:
    """The table a DTYPE=auto server without ALLOW_INT8 measures (bf16 hopeless at batch 1)."""
    return {"kernels": {"chosen": chosen, "allow_int8": False, "requested": "auto", "table": [
        {"precision": "float32", "batch_1_ms": 300.0, "batch_max_ms": 900.0, "max_batch": 8},
        {"precision": "float32+onednn", "batch_1_ms": 200.0, "batch_max_ms": 400.0,
         "max_batch": 8},
        {"precision": "bfloat16", "batch_1_ms": 2500.0, "batch_max_ms": None, "max_batch": 8}]}}


def test_without_native_bf16_and_int8_off_the_report_suggests_int8(write_run) -> None:
    # /ready's dtype names the dtype only: "float32" while the oneDNN path is served.
    epyc = write_run("epyc", run={"host": EPYC, "dtype": "float32",
                                  "server": no_int8_kernels()}, requests=REQUESTS)
    xeon = write_run("xeon", run={"host": XEON, "dtype": "float32+onednn",
                                  "server": no_int8_kernels()}, requests=REQUESTS)

    epyc_findings = build_findings(load_run(epyc), AnalysisConfig())
    fired = {r.rule: r for r in epyc_findings.recommendations}
    assert "set ALLOW_INT8=1" in fired["int8_not_measured"].text
    assert "serves float32+onednn (400 ms per decode step at batch 8)" in (
        fired["int8_not_measured"].text)
    # The spread between the timed paths (900 vs 400 ms) is worth knowing; hopeless bf16
    # (never timed at batch 8) is left out of it.
    assert "float32+onednn decodes 2.2x faster than float32" in fired["kernel_path"].text
    assert fired["kernel_path"].severity == "info"  # the fastest path is the one served
    assert "the server served float32+onednn" in fired["kernel_path"].text
    xeon_rules = {r.rule for r in build_findings(load_run(xeon), AnalysisConfig()).recommendations}
    assert "int8_not_measured" not in xeon_rules  # native bf16: int8 is not the obvious fix


def test_a_faster_onednn_path_is_served_through_dtype_auto(write_run) -> None:
    folder = write_run(run={"host": EPYC, "dtype": "float32",
                            "server": no_int8_kernels("float32")}, requests=REQUESTS)

    finding = kernel_path(build_findings(load_run(folder), AnalysisConfig()))

    assert finding.severity == "warning" and "set DTYPE=auto." in finding.text
