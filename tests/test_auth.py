"""API keys on the Flask test client: the auth matrix, public paths, key ids, startup rules."""

import base64
import hashlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.waiting import wait_until
from server import create_app
from server.web.auth import ConfigError
from tests.conftest import TEST_API_KEY, TEST_OPERATOR_KEY, build_app

OTHER_KEY = "other-key-fedcba9876543210"
BODY = {"prompt": "Hello there", "max_new_tokens": 2}


def _key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


@pytest.fixture(scope="module")
def two_key_app(tiny_model, tmp_path_factory: pytest.TempPathFactory):
    """One app holding both keys for the whole matrix: each case is one request whose answer
    is all it checks (its two wrong keys stay far below the failed-key throttle)."""
    return build_app(tmp_path_factory.mktemp("auth") / "server_requests.jsonl",
                     API_KEYS=f"{TEST_API_KEY},{OTHER_KEY}")


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "missing_api_key"),
        ({"Authorization": "Bearer "}, 401, "missing_api_key"),
        ({"X-API-Key": ""}, 401, "missing_api_key"),
        ({"Authorization": "Bearer wrong-key-0123456789"}, 401, "invalid_api_key"),
        ({"X-API-Key": TEST_API_KEY + "x"}, 401, "invalid_api_key"),
        ({"Authorization": TEST_API_KEY}, 401, "missing_api_key"),  # no "Bearer"
        ({"Authorization": "Basic " + base64.b64encode(f"{TEST_API_KEY}:".encode()).decode()},
         401, "missing_api_key"),
        ({"X-Api-Token": TEST_API_KEY}, 401, "missing_api_key"),  # not an accepted header
        ({"Authorization": f"Bearer {TEST_API_KEY}"}, 200, None),
        ({"Authorization": f"bearer {TEST_API_KEY}"}, 200, None),
        ({"X-API-Key": TEST_API_KEY}, 200, None),
        ({"X-API-Key": OTHER_KEY}, 200, None),
    ],
    ids=["no-key", "empty-bearer", "empty-x-api-key", "wrong-bearer", "wrong-x-api-key",
         "key-without-bearer", "key-as-basic-user", "wrong-header", "bearer", "bearer-lowercase",
         "x-api-key", "second-key"],
)
def test_auth_matrix(two_key_app, headers, status, code) -> None:
    client = two_key_app.test_client(api_key="")
    response = client.post("/generate-text", json=BODY, headers=headers)
    assert response.status_code == status, response.json
    if code:
        assert response.json["error"]["code"] == code
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        # X-Request-ID, but no telemetry for a caller who is not authenticated.
        assert response.headers["X-Request-ID"] and "X-Worker-PSS-MB" not in response.headers
        assert TEST_API_KEY not in response.get_data(as_text=True)


def test_key_in_query_string_is_not_accepted(make_app) -> None:
    client = make_app().test_client(api_key="")
    response = client.post(f"/generate-text?api_key={TEST_API_KEY}", json=BODY)
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/health", "/ready", "/openapi.json", "/docs"])
def test_public_paths_need_no_key(make_app, path) -> None:
    response = make_app().test_client(api_key="").get(path)
    assert response.status_code in (200, 503) and response.status_code != 401  # 503: warming


def test_metrics_needs_the_operator_key_not_an_api_key(make_app) -> None:
    # The operator surfaces in full: tests/test_operator_surfaces.py.
    app = make_app()
    assert app.test_client(api_key="").get("/metrics").status_code == 401
    assert app.test_client().get("/metrics").status_code == 401
    assert app.test_client(api_key=TEST_OPERATOR_KEY).get("/metrics").status_code == 200


def test_unknown_paths_say_401_without_a_key_and_404_with_one(client, make_app) -> None:
    assert make_app().test_client(api_key="").get("/admin").status_code == 401
    assert client.get("/admin").status_code == 404


def test_request_log_has_the_key_id_never_the_key(make_app, request_log) -> None:
    app = make_app(API_KEYS=f"{TEST_API_KEY},{OTHER_KEY}")
    assert app.test_client().post("/generate-text", json=BODY).status_code == 200
    assert app.test_client(api_key=OTHER_KEY).post("/generate-text", json=BODY).status_code == 200
    assert app.test_client(api_key="nope").post("/generate-text", json=BODY).status_code == 401
    records = [json.loads(line) for line in request_log.read_text().splitlines()]
    assert [(r["status"], r["key_id"]) for r in records] == [
        (200, _key_id(TEST_API_KEY)), (200, _key_id(OTHER_KEY)), (401, None)]
    assert records[2]["batch_size"] == 0 and records[2]["prompt_tokens"] is None
    text = request_log.read_text()
    assert TEST_API_KEY not in text and OTHER_KEY not in text
    assert TEST_API_KEY not in str(app.config.get("API_KEYS"))  # redacted after hashing


def test_unauthorized_requests_cost_no_model_time(make_app) -> None:
    # 25 wrong keys: under the failed-authentication throttle (test_hostile_clients.py).
    app = make_app(MAX_BATCH_SIZE=1, IGNORE_EOS=True, MAX_NEW_TOKENS_CAP=1000,
                   ADMIT_PREDICTED=False, AUTH_FAILURE_LIMIT="100/minute")
    service = app.extensions["model_service"]
    # Before any authorized request, 401s never start the model service at all.
    outsider = app.test_client(api_key="wrong-key-0123456789")
    assert [outsider.post("/generate-text", json=BODY).status_code for _ in range(5)] == [401] * 5
    assert service.sampler is None and not service.ready.is_set()
    # With the model busy on a long generation, 20 concurrent 401s leave the queue empty.
    busy = threading.Thread(target=lambda: app.test_client().post(
        "/generate-text", json={"prompt": "Go on", "max_new_tokens": 1000}))
    busy.start()
    wait_until(lambda: service.scheduler.running == 1, "the long generation is running",
               interval_s=0.005, alive=busy.is_alive)
    depths: list[int] = []

    def refused(_: int) -> int:
        status = app.test_client(api_key="wrong-key-0123456789").post(
            "/generate-text", json=BODY).status_code
        depths.append(service.scheduler.depth)
        return status

    with ThreadPoolExecutor(10) as pool:
        assert set(pool.map(refused, range(20))) == {401}
    assert set(depths) == {0} and service.scheduler.running == 1
    busy.join(120)


def test_keys_file_with_plain_and_hashed_keys(make_app, tmp_path) -> None:
    hashed = "hashed-key-abcdefabcdef0123"
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# team keys\n{OTHER_KEY}\n\nsha256:"
                         f"{hashlib.sha256(hashed.encode()).hexdigest().upper()}\n")
    app = make_app(API_KEYS="", API_KEYS_FILE=str(keys_file))
    for key, status in [(OTHER_KEY, 200), (hashed, 200), (TEST_API_KEY, 401),
                        ("# team keys", 401)]:
        response = app.test_client(api_key=key).post("/generate-text", json=BODY)
        assert response.status_code == status, key


def test_env_and_file_keys_combine(make_app, tmp_path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(OTHER_KEY + "\n")
    app = make_app(API_KEYS_FILE=str(keys_file))
    for key in (TEST_API_KEY, OTHER_KEY):
        assert app.test_client(api_key=key).post("/generate-text", json=BODY).status_code == 200


def test_malformed_hash_line_names_the_line_not_its_content(make_app, tmp_path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{OTHER_KEY}\nsha256:not-hex-secret-part\n")
    with pytest.raises(ConfigError, match="line 2") as raised:
        make_app(API_KEYS_FILE=str(keys_file))
    assert "secret-part" not in str(raised.value) and OTHER_KEY not in str(raised.value)


def test_missing_keys_file_is_a_config_error(make_app, tmp_path) -> None:
    with pytest.raises(ConfigError, match="API_KEYS_FILE"):
        make_app(API_KEYS_FILE=str(tmp_path / "absent.txt"))


def test_no_keys_refuses_to_start_before_loading_the_model(make_app, monkeypatch) -> None:
    monkeypatch.delenv("API_KEYS", raising=False)
    monkeypatch.delenv("API_KEYS_FILE", raising=False)
    # MODEL would fail to load: the key check must come first and name the fix.
    with pytest.raises(ConfigError, match=r"API_KEYS.*ALLOW_ANONYMOUS=1"):
        create_app({"MODEL": "/nonexistent/model", "API_KEYS": "", "ALLOW_ANONYMOUS": False})


def test_allow_anonymous_serves_without_keys_and_says_so(make_app, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="server.web.auth"):
        app = make_app(API_KEYS="", ALLOW_ANONYMOUS=True)
    assert "ALLOW_ANONYMOUS=1" in caplog.text and "ANYONE" in caplog.text
    assert app.test_client(api_key="").post("/generate-text", json=BODY).status_code == 200
    # No API-key schemes; only /metrics asks the operator key (tests/test_operator_surfaces.py).
    schemes = app.test_client().get("/openapi.json").json["components"]["securitySchemes"]
    assert set(schemes) == {"operatorKey"}


def test_keys_win_over_allow_anonymous(make_app) -> None:
    app = make_app(ALLOW_ANONYMOUS=True)
    assert app.test_client(api_key="").post("/generate-text", json=BODY).status_code == 401
