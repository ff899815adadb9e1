"""Key rotation: API_KEYS_FILE re-read when it changes, and on SIGHUP (new workers re-read it);
a malformed file leaves the current keys. Real Gunicorn for the acceptance, the Flask app for
the malformed-file rules."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import requests

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from tests.conftest import server_env

KEY_A = "key-a-0123456789abcdef0123"
KEY_B = "key-b-0123456789abcdef0123"
KEY_C = "key-c-0123456789abcdef0123"  # as long as KEY_A: an in-place swap keeps the size
BODY = {"prompt": "Hello", "max_new_tokens": 2}
REVOKED_WITHIN_S = 5.0  # the acceptance


def _status(url: str, key: str) -> int:
    # A fresh connection each time, so either worker may answer.
    return requests.post(url + "/generate-text", json=BODY, timeout=60, headers={
        "Authorization": f"Bearer {key}", "Connection": "close"}).status_code


def _statuses(url: str, key: str, n: int = 6) -> set[int]:
    return {_status(url, key) for _ in range(n)}


def _serve(tmp_path: Path, keys_file: Path) -> GunicornServer:
    env = server_env(tmp_path, API_KEYS="", API_KEYS_FILE=str(keys_file))
    return GunicornServer(tmp_path, env, workers=2)


def test_a_key_removed_from_the_file_is_refused_within_5_s(tiny_model, tmp_path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{KEY_A}\n{KEY_B}\n")
    with _serve(tmp_path, keys_file) as server:
        assert _statuses(server.url, KEY_A) == _statuses(server.url, KEY_B) == {200}
        keys_file.write_text(f"# A revoked\n{KEY_B}\n")  # rewritten in place
        took_s = wait_until(lambda: _statuses(server.url, KEY_A) == {401},
                            "the removed key is refused by both workers", timeout_s=60,
                            alive=server.alive, detail=server.log_text)
        assert took_s < REVOKED_WITHIN_S
        assert _statuses(server.url, KEY_B) == {200}
        assert "API keys reloaded" in server.log_text() and KEY_A not in server.log_text()


def test_sighup_reloads_the_key_file(tiny_model, tmp_path) -> None:
    """The file is changed so that a stat sees nothing (same inode, size and mtime): only
    the SIGHUP (new workers, which re-read the file as they start) can revoke the key."""
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{KEY_A}\n{KEY_B}\n")
    with _serve(tmp_path, keys_file) as server:
        before = set(server.worker_pids())
        assert _statuses(server.url, KEY_A) == {200}
        stat = keys_file.stat()
        with keys_file.open("r+") as rewrite:
            rewrite.write(KEY_C)  # KEY_A's bytes, overwritten in place
        os.utime(keys_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        after = keys_file.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            stat.st_ino, stat.st_size, stat.st_mtime_ns)
        assert _statuses(server.url, KEY_A) == {200}  # unseen by the once-a-second stat
        os.kill(server.master_pid(), signal.SIGHUP)
        took_s = wait_until(lambda: _statuses(server.url, KEY_A) == {401},
                            "the removed key is refused after SIGHUP", timeout_s=60,
                            alive=server.alive, detail=server.log_text)
        assert took_s < REVOKED_WITHIN_S
        assert set(server.worker_pids()) - before  # new workers (the old ones are stopping)
        assert _statuses(server.url, KEY_B) == _statuses(server.url, KEY_C) == {200}


def test_a_malformed_or_empty_file_keeps_the_current_keys(make_app, tmp_path, caplog) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{KEY_A}\n")
    app = make_app(API_KEYS="", API_KEYS_FILE=str(keys_file))
    source = app.extensions["api_keys"]

    def served(key: str) -> int:
        return app.test_client(api_key=key).post("/generate-text", json=BODY).status_code

    for content, problem in [(f"{KEY_B}\nsha256:abc\n", "line 2: a sha256: entry needs"),
                             ("# nothing\n", "no keys in it")]:
        keys_file.write_text(content)
        source.reload()
        assert served(KEY_A) == 200 and served(KEY_B) == 401
        assert "API keys not reloaded, the 1 current key(s) stay" in caplog.text
        assert problem in caplog.text
        caplog.clear()
    keys_file.write_text(f"{KEY_B}\n")
    source.reload()
    assert served(KEY_A) == 401 and served(KEY_B) == 200
    assert KEY_A not in caplog.text and KEY_B not in caplog.text
