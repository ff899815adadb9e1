"""The run-folder module: one typed run.json record, one writer, every committed run readable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from analysis.run import load_run
from harness.run_folder import REPO, read_record, update_record, write_record
from harness.run_record import RunRecord


def committed_run_dirs() -> list[Path]:
    """Every run folder under results/ that git tracks a run.json of."""
    files = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    return sorted({(REPO / f).parent for f in files if f.endswith("/run.json")})


def test_there_are_committed_runs_to_check() -> None:
    assert len(committed_run_dirs()) >= 10


@pytest.mark.parametrize("run_dir", committed_run_dirs(), ids=lambda p: p.name)
def test_committed_run_json_loads_typed_and_round_trips(run_dir: Path) -> None:
    original = json.loads((run_dir / "run.json").read_text())
    record = read_record(run_dir)

    assert record.as_dict() == original  # nothing dropped, renamed or added
    run = load_run(run_dir)
    assert not [n for n in run.notes if "run.json" in n] and run.settings == original
    assert run.record.model == original.get("model")


def test_update_adds_facts_and_merges_blocks(tmp_path: Path) -> None:
    update_record(tmp_path, label="a", users=3, host={"cores": 2, "cpu_model": "X"})
    record = update_record(tmp_path, git_commit="abc", host={"ram_gb": 8.0},
                           bench={"row": "r1"})

    assert record.label == "a" and record.users == 3 and record.git_commit == "abc"
    assert record.host.model_dump(exclude_none=True) == {"cores": 2, "cpu_model": "X",
                                                         "ram_gb": 8.0}
    assert json.loads((tmp_path / "run.json").read_text())["bench"] == {"row": "r1"}
    assert read_record(tmp_path) == record


def test_wrong_types_are_refused_by_reader_and_writer(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"users": "many"}))

    with pytest.raises(ValidationError):
        read_record(tmp_path)
    (fresh := tmp_path / "fresh").mkdir()
    with pytest.raises(ValidationError):
        update_record(fresh, workers="two")
    assert not (fresh / "run.json").exists()  # refused before anything is written
    run = load_run(tmp_path)
    assert any("`run.json` could not be read" in n for n in run.notes)


def test_write_is_whole_file_and_keeps_unknown_blocks(tmp_path: Path) -> None:
    record = RunRecord.model_validate({"label": "x", "reference": {"row": 1}, "shape": None})
    write_record(tmp_path, record)

    assert json.loads((tmp_path / "run.json").read_text()) == {
        "label": "x", "reference": {"row": 1}, "shape": None}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left


def test_committed_runs_read_their_gzipped_raw_files() -> None:
    """Committed runs keep their larger raw files gzipped (results/ stays small): the loader
    reads ``<name>.gz`` where the plain file is gone, and nothing is reported missing."""
    zipped = [d for d in committed_run_dirs() if (d / "server_requests.jsonl.gz").is_file()
              and (d / "locust_stats_history.csv.gz").is_file()]
    assert zipped
    run = load_run(zipped[0])
    assert len(run.server_log) and len(run.history)
    assert not [n for n in run.notes if "missing" in n and ("jsonl" in n or "history" in n)]
