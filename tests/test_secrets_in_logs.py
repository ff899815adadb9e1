"""No API key reaches a log or a response: real Gunicorn, known keys, every way a key is sent."""

import base64
import hashlib
import secrets
from pathlib import Path

import requests

from harness.gunicorn_process import GunicornServer
from tests.conftest import server_env


def _key() -> str:
    return "sk-" + secrets.token_urlsafe(24)


def test_keys_never_appear_in_the_server_log_request_log_or_responses(tiny_model,
                                                                       tmp_path: Path) -> None:
    env_keys, file_key, hashed_key = [_key(), _key()], _key(), _key()
    near_miss = env_keys[0][:-1] + ("A" if env_keys[0][-1] != "A" else "B")
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{file_key}\nsha256:{hashlib.sha256(hashed_key.encode()).hexdigest()}\n")
    request_log = tmp_path / "server_requests.jsonl"
    operator_key, wrong_operator_key = _key(), _key()
    env = server_env(tmp_path, API_KEYS=",".join(env_keys), API_KEYS_FILE=str(keys_file),
                     OPERATOR_KEYS=operator_key, RATE_LIMIT="4/minute")
    body = {"prompt": "Say something", "max_new_tokens": 2}
    seen: list[requests.Response] = []
    with GunicornServer(tmp_path, env, workers=2) as server:
        def send(path: str = "/generate-text", **kwargs) -> int:
            kwargs.setdefault("json", body)
            response = requests.post(server.url + path, timeout=30, **kwargs)
            seen.append(response)
            return response.status_code

        bearer = {"Authorization": f"Bearer {env_keys[0]}"}
        # Accepted: each header and each key source.
        assert send(headers=bearer) == 200
        assert send(headers={"X-API-Key": env_keys[1]}) == 200
        assert send(headers={"Authorization": f"Bearer {file_key}"}) == 200
        assert send(headers={"X-API-Key": hashed_key}) == 200
        # Refused: a near miss, keys in places that are not accepted.
        assert send(headers={"Authorization": f"Bearer {near_miss}"}) == 401
        assert send(f"/generate-text?api_key={env_keys[0]}&key={file_key}") == 401
        basic = base64.b64encode(f"{env_keys[0]}:{hashed_key}".encode()).decode()
        assert send(headers={"Authorization": f"Basic {basic}"}) == 401
        assert send(headers={"X-Api-Token": env_keys[1]}) == 401
        # Keys inside bodies that fail validation must not be echoed in error details.
        assert send(headers=bearer, json={"prompt": "hi", "seed": env_keys[1]}) == 422
        assert send(headers=bearer, json={"prompt": file_key, "unknown": hashed_key}) == 422
        assert send(headers={**bearer, "Content-Type": "application/json"}, json=None,
                    data=f'{{"prompt": "{env_keys[1]}"') == 400
        # Rate limited: the limiter logs the key id, not the key.
        # 10: with memory:// each of the 2 workers counts 4/minute on its own.
        statuses = [send(headers=bearer) for _ in range(10)]
        assert 429 in statuses
        # The operator key, right and wrong, on the operator surfaces.
        scraped = requests.get(f"{server.url}/metrics", timeout=10,
                               headers=server.operator_headers)
        assert scraped.status_code == 200 and server.operator_key == operator_key
        refused = requests.get(f"{server.url}/metrics", timeout=10,
                               headers={"Authorization": f"Bearer {wrong_operator_key}"})
        assert refused.status_code == 401
    server_log = server.log_text()
    logged = server_log + request_log.read_text()
    answered = "".join(r.text + str(dict(r.headers)) for r in [*seen, refused])
    for secret in [*env_keys, file_key, hashed_key, near_miss, operator_key,
                   wrong_operator_key]:
        assert secret not in logged
        assert secret not in answered
    # The logs were really written: the key ids are there, and the access log saw every call.
    ids = {hashlib.sha256(k.encode()).hexdigest()[:8] for k in [*env_keys, file_key, hashed_key]}
    assert all(key_id in request_log.read_text() for key_id in ids)
    assert server_log.count('"POST /generate-text HTTP/1.1"') == len(seen)
    assert "exceeded at endpoint" in server_log
