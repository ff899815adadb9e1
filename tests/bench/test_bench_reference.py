"""The llama.cpp reference's pure parts: rows, command lines, the missing-build message, the
table's ratios. No llama.cpp, no server: the run itself is `make bench-reference`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import pytest

from bench.llama_reference import (
    LlamaSettings,
    ReferenceMissing,
    check_built,
    gguf_path,
    llama_dir,
    server_binary,
    server_command,
)
from bench.reference import main, parse_args, require_requests
from bench.reference_record import cpu_model, load_note
from bench.reference_rows import (
    Row,
    llama_locust_command,
    ours_command,
    parse_variant,
    plan_rows,
)
from bench.reference_table import (
    ReferenceRow,
    generations,
    peak_until_answered,
    render_rows,
)

LSCPU = """Architecture:                            x86_64
Vendor ID:                               AuthenticAMD
Model name:                              AMD EPYC 7B13
CPU family:                              25
"""


def args_for(*argv: str) -> argparse.Namespace:
    return parse_args(["--llama-dir", "/opt/llama", *argv])


def value_after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_rows_ours_then_llama_per_user_count() -> None:
    rows = args_for("--lone-user", "--ours", "defaults=", "--ours", "int8=--dtype int8").rows

    assert [r.name for r in rows] == [
        "ours-defaults-u8", "ours-int8-u8", "llama-f16-u8", "llama-q8_0-u8",
        "ours-defaults-u1", "ours-int8-u1", "llama-f16-u1", "llama-q8_0-u1"]
    assert rows[1] == Row("ours-int8-u8", "ours", 8, ("--dtype", "int8"))
    assert rows[2] == Row("llama-f16-u8", "llama.cpp", 8, quant="f16")


def test_default_rows_are_the_issues_comparison() -> None:
    assert [r.name for r in args_for().rows] == ["ours-defaults-u8", "llama-f16-u8",
                                                 "llama-q8_0-u8"]
    assert [r.name for r in args_for("--no-ours", "--quants", "q8_0").rows] == ["llama-q8_0-u8"]


@pytest.mark.parametrize("bad", ["int8", "=--dtype int8", ""])
def test_variant_without_label_is_refused_with_the_expected_form(bad: str) -> None:
    with pytest.raises(ValueError, match="LABEL=LOADTEST_OPTIONS"):
        parse_variant(bad)


def test_unknown_gguf_type_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="f16, q8_0"):
        plan_rows([8], [], ["q4_0"])
    with pytest.raises(ValueError, match="f16, q8_0"):
        gguf_path(Path("/x"), "gpt2", "bf16")


def test_llama_rows_get_the_issues_locust_command(tmp_path: Path) -> None:
    args = args_for("--duration", "150", "--stop-timeout", "120")
    cmd = llama_locust_command(args, args.rows[1], tmp_path, "http://127.0.0.1:9001",
                               tmp_path / "llama-server.pid")
    line = " ".join(cmd)

    assert "-m locust -f locustfiles --host http://127.0.0.1:9001 " in line
    assert ("--headless --target openai --mix openai -u 8 -r 8 -t 150s --stop-timeout 120"
            in line)
    assert value_after(cmd, "--run-dir") == str(tmp_path)
    assert value_after(cmd, "--server-pidfile") == str(tmp_path / "llama-server.pid")
    assert value_after(cmd, "--csv") == str(tmp_path / "locust")


def test_ours_gets_the_same_load_through_the_run_script(tmp_path: Path) -> None:
    args = args_for("--preset", "gpt2", "--duration", "30", "--lone-user",
                    "--ours", "int8=--dtype int8")
    lone = next(r for r in args.rows if r.name == "ours-int8-u1")
    cmd = ours_command(args, lone, tmp_path)

    assert cmd[1] == "scripts/loadtest.py"
    assert value_after(cmd, "--model") == "synthetic:gpt2"
    assert value_after(cmd, "--mix") == "openai"
    assert (value_after(cmd, "--users"), value_after(cmd, "--spawn-rate")) == ("1", "1")
    assert (value_after(cmd, "--duration"), value_after(cmd, "--stop-timeout")) == ("30", "120")
    assert cmd[-2:] == ["--dtype", "int8"]


def test_llama_server_command_has_the_issues_settings_and_no_key() -> None:
    cmd = server_command(Path("/opt/llama/build/bin/llama-server"),
                         Path("/opt/llama/gguf/synthetic-gpt2-f16.gguf"), 9001,
                         "synthetic-gpt2-f16", LlamaSettings())
    line = " ".join(cmd)

    assert cmd[0] == "/opt/llama/build/bin/llama-server"
    assert value_after(cmd, "-m") == "/opt/llama/gguf/synthetic-gpt2-f16.gguf"
    assert "-t 2 --parallel 8 -c 8192 --host 127.0.0.1 --port 9001" in line
    assert "api-key" not in line  # passed as $LLAMA_API_KEY, so commands.sh holds no key


def test_missing_build_names_each_file_and_the_build_command(tmp_path: Path) -> None:
    binary = server_binary(tmp_path)
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    f16, q8 = gguf_path(tmp_path, "gpt2", "f16"), gguf_path(tmp_path, "gpt2", "q8_0")

    with pytest.raises(ReferenceMissing) as missing:
        check_built([binary, f16, q8], "gpt2", tmp_path)

    message = str(missing.value)
    assert f"  {f16}\n  {q8}\n" in message and str(binary) not in message
    assert f"LLAMA_DIR={tmp_path} bash bench/build_llama_reference.sh gpt2" in message
    f16.parent.mkdir()
    f16.write_text("")
    q8.write_text("")
    check_built([binary, f16, q8], "gpt2", tmp_path)  # all there: no error


def test_main_stops_before_any_run_when_llama_is_not_built(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ReferenceMissing, match=r"bash bench/build_llama_reference\.sh gpt2"):
        main(["--preset", "gpt2", "--llama-dir", str(tmp_path / "none"), "--out", str(out)])
    assert not out.exists()


def test_llama_dir_comes_from_option_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_DIR", "/env/llama")
    assert llama_dir() == Path("/env/llama")
    assert llama_dir("/opt/llama") == Path("/opt/llama")
    monkeypatch.delenv("LLAMA_DIR")
    assert llama_dir() == Path("/work/cache/llama")


def test_cpu_model_is_lscpus_model_name() -> None:
    assert cpu_model(LSCPU) == "AMD EPYC 7B13"
    assert cpu_model("Architecture: x86_64\n") == ""


def row(run: str, server: str, users: int, tok_s: float, ttft_s: float, pss: float,
        rss: float) -> ReferenceRow:
    return ReferenceRow(run=run, server=server, users=users, requests=40, failures=1,
                        output_tokens_per_s=tok_s, requests_per_s=0.3, p50_s=17.5, p95_s=42.7,
                        ttft_p50_s=ttft_s, peak_total_pss_mb=pss, peak_total_rss_mb=rss)


def test_table_ratios_are_against_llama_with_as_many_users() -> None:
    rows = [row("ours-u8", "ours", 8, 6.0, 3.0, 3000.0, 9000.0),
            row("llama-f16-u8", "llama.cpp", 8, 12.0, 1.5, 1700.0, 2000.0),
            row("llama-q8_0-u8", "llama.cpp", 8, 9.0, 3.0, 900.0, 1000.0),
            row("ours-u1", "ours", 1, 4.0, 0.5, 2500.0, 5000.0),
            row("llama-f16-u1", "llama.cpp", 1, 5.0, 0.25, 1600.0, 1900.0)]
    lines = render_rows(rows).splitlines()
    cells = {line.split(" | ")[0].strip("| "): line.split(" | ")[-3:] for line in lines[2:]}

    assert cells["ours-u8"] == ["0.50x", "2.00x", "1.50x |"]  # 6/12, 3/1.5, 3000/2000
    assert cells["llama-q8_0-u8"] == ["0.75x", "2.00x", "0.45x |"]
    assert cells["ours-u1"] == ["0.80x", "2.00x", "1.32x |"]  # against the 1-user llama row
    assert lines[2].startswith(
        "| ours-u8 | 8 | 40 (1) | 6.00 | 0.300 | 17.5 | 42.7 | 3.00 | 3,000 | 9,000 |")


def test_table_without_a_llama_row_or_a_number_says_na() -> None:
    line = render_rows([row("ours-u8", "ours", 8, 6.0, math.nan, 3000.0, 9000.0)]).splitlines()[2]

    assert line.endswith("| n/a | 3,000 | 9,000 | n/a | n/a | n/a |")


def test_generations_count_only_posts() -> None:
    requests = pd.DataFrame({
        "method": ["GET", "POST", "POST", "POST", "POST"],
        "success": [True, True, True, True, False],
        "response_time_ms": [100.0, 10_000.0, 20_000.0, 30_000.0, 500.0]})

    g = generations(requests, window_s=60.0)

    assert (g.requests, g.failures) == (4, 1)
    assert g.requests_per_s == pytest.approx(3 / 60)
    assert (g.p50_ms, g.p95_ms) == pytest.approx((20_000.0, 29_000.0))


def test_load_note_warns_when_others_shared_the_cpu() -> None:
    quiet = load_note({"ours-defaults-u8": 0.2, "llama-f16-u8": 0.9}, cores=2)
    busy = load_note({"ours-defaults-u8": 0.2, "llama-f16-u8": 13.7}, cores=2)

    assert quiet == ("1-minute load average at each row's start: ours-defaults-u8 0.2, "
                     "llama-f16-u8 0.9.")
    assert "**Busy box** (1 of 2 rows started with load > 1)" in busy
    assert load_note({}, cores=2) == ""


def test_a_row_without_requests_stops_the_reference(tmp_path: Path) -> None:
    row = Row("ours-defaults-u8", "ours", 8)
    with pytest.raises(SystemExit, match=r"ours-defaults-u8 produced no requests\.csv \(exit 1\)"):
        require_requests(row, tmp_path, 1, "gunicorn.log")
    (tmp_path / "requests.csv").write_text("timestamp\n")
    require_requests(row, tmp_path, 0, "gunicorn.log")


def _equal_work_run(folder: Path) -> Path:
    """A run folder: total PSS 100, 150, 300, 120, 500, 90 MB at t = 0..5 s, and three answers
    ending at 1.5, 2.5 and 4.5 s (a /v1/models call and a failure beside them)."""
    folder.mkdir()
    t0 = 1_800_000_000.0
    memory = ["timestamp,pid,role,rss_mb,uss_mb,pss_mb,shared_mb,sys_available_mb"]
    memory += [f"{t0 + t},0,total,{2 * p},{p},{p},0,9000"
               for t, p in enumerate((100, 150, 300, 120, 500, 90))]
    (folder / "memory.csv").write_text("\n".join(memory) + "\n")
    requests = ["timestamp,user_class,method,route,status_code,response_time_ms,success,"
                "failure_reason"]
    requests += [f"{t0 + start},U,{method},{route},{code},{ms},{ok},{'' if ok else 'HTTP 503'}"
                 for start, method, route,
                 code, ms, ok in ((0.0, "GET", "/v1/models", 200, 5000, True),
                                  (0.5, "POST", "/v1/completions", 200, 1000, True),
                                  (1.0, "POST", "/v1/completions", 200, 1500, True),
                                  (1.2, "POST", "/v1/completions", 503, 100, False),
                                  (3.0, "POST", "/v1/completions", 200, 1500, True))]
    (folder / "requests.csv").write_text("\n".join(requests) + "\n")
    return folder


def test_peak_until_answered_stops_at_that_answers_end(tmp_path: Path) -> None:
    """Equal work: the peak up to the end of the n-th answered generation request; /v1/models
    and failures are not answers, and a request's end is its start plus its response time."""
    run = _equal_work_run(tmp_path / "run")
    assert peak_until_answered(run, 1) == 150  # ends at 1.5 s: samples at 0 and 1 s
    assert peak_until_answered(run, 2) == 300  # 2.5 s: the 300 at 2 s, not the 500 at 4 s
    assert peak_until_answered(run, 3) == 500
    assert peak_until_answered(run, 3, "rss_mb") == 1000
    assert math.isnan(peak_until_answered(run, 4))  # it answered three
    assert math.isnan(peak_until_answered(run, 0))
