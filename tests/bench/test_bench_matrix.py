"""The bench rows: the naive baseline first, row selection, what each row gives the server."""

from __future__ import annotations

import pytest

from bench.matrix import COMMON_ENV, ROWS, select


def test_naive_row_is_first_and_serves_one_request_at_a_time() -> None:
    naive = ROWS[0]
    assert naive.name == "naive"
    assert (naive.workers, naive.dtype, naive.max_batch_size) == (1, "float32", 1)
    env = naive.server_env()
    assert env["GUNICORN_CMD_ARGS"] == "--worker-class sync --threads 1"
    assert env["GUNICORN_PRELOAD"] == "0"


def test_every_row_gets_fixed_length_answers_and_no_rate_limit() -> None:
    for row in ROWS:
        env = row.server_env()
        assert env.items() >= COMMON_ENV.items()
        assert env["IGNORE_EOS"] == "1" and env["RATE_LIMIT"] == ""
    assert len({row.name for row in ROWS}) == len(ROWS)


def test_loadtest_args_carry_the_row_settings() -> None:
    row = select(["batch-bf16"])[0]
    args = row.loadtest_args()
    assert args[args.index("--dtype") + 1] == "bfloat16"
    assert args[args.index("--max-batch-size") + 1] == str(row.max_batch_size)
    assert args[args.index("--workers") + 1] == "2"


@pytest.mark.parametrize(("names", "expected"), [
    ([], [row.name for row in ROWS]),
    (["batch-bf16", "naive"], ["batch-bf16", "naive"]),
])  # fmt: skip
def test_select_keeps_the_given_order(names: list[str], expected: list[str]) -> None:
    assert [row.name for row in select(names)] == expected


def test_select_names_the_valid_rows_on_a_typo() -> None:
    with pytest.raises(ValueError, match="unknown bench rows \\['nieve'\\]; valid: naive, "):
        select(["nieve"])
