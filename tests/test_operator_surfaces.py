"""Operator surfaces: /metrics and /ready's details need the operator key (OPERATOR_KEYS);
per-request telemetry headers go only to authenticated callers (test client and Gunicorn)."""

import hashlib
import logging
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from server import create_app
from server.config import ConfigError
from tests.conftest import TEST_API_KEY, TEST_OPERATOR_KEY, server_env

TELEMETRY = ["X-Worker-PID", "X-Worker-RSS-MB", "X-Worker-USS-MB", "X-Worker-PSS-MB",
             "X-Queue-Ms", "X-Inference-Ms", "X-Batch-Size", "X-CPU-Ms"]
BODY = {"prompt": "Hello there", "max_new_tokens": 2}
OPERATOR = {"Authorization": f"Bearer {TEST_OPERATOR_KEY}"}
TENANT = {"Authorization": f"Bearer {TEST_API_KEY}"}


def _telemetry_in(headers) -> list[str]:
    return [name for name in TELEMETRY if name in headers]


def _ready(client, headers: dict[str, str]):
    answers = []

    def answered() -> bool:
        answers.append(client.get("/ready", headers=headers))
        return answers[-1].status_code != 503

    wait_until(answered, "/ready says yes", timeout_s=300, interval_s=0.05)
    return answers[-1]


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_operator_key"),
     (TENANT, "invalid_operator_key"),
     ({"X-API-Key": TEST_API_KEY}, "invalid_operator_key"),
     ({"Authorization": "Bearer wrong-operator-key-0123456789"}, "invalid_operator_key")],
    ids=["no-key", "tenant-bearer", "tenant-x-api-key", "wrong-key"],
)
def test_metrics_refuses_all_but_the_operator_key(make_app, headers, code) -> None:
    response = make_app().test_client(api_key="").get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.json["error"]["code"] == code
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.headers["X-Request-ID"] and not _telemetry_in(response.headers)
    assert "gpt_" not in response.get_data(as_text=True)


@pytest.mark.parametrize("headers", [OPERATOR, {"X-API-Key": TEST_OPERATOR_KEY}],
                         ids=["bearer", "x-api-key"])
def test_metrics_answers_the_operator_key_with_prometheus_text(make_app, headers) -> None:
    response = make_app().test_client(api_key="").get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    names = {f.name for f in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {"gpt_requests", "gpt_prompt_tokens_cached", "gpt_worker_pss_bytes"} <= names


def test_without_operator_keys_metrics_is_off_and_startup_says_so(make_app, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="server.web.operator_auth"):
        app = make_app(OPERATOR_KEYS="")
    assert "operator surfaces are off" in caplog.text
    for headers in ({}, TENANT, OPERATOR):
        response = app.test_client(api_key="").get("/metrics", headers=headers)
        assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
    assert _ready(app.test_client(api_key=""), OPERATOR).json == {"status": "ready"}


def test_ready_is_minimal_for_probes_and_detailed_for_the_operator(make_app) -> None:
    client = make_app().test_client(api_key="")
    detailed = _ready(client, OPERATOR)
    assert detailed.status_code == 200 and detailed.json["model"] == "synthetic:tiny"
    assert {"kernels", "dtype", "limits", "kv_tokens"} <= set(detailed.json)
    assert detailed.headers["X-Worker-PID"]  # the harness counts ready workers by it
    for headers in ({}, TENANT, {"Authorization": "Bearer wrong-operator-key-0123456789"}):
        minimal = client.get("/ready", headers=headers)
        assert minimal.status_code == 200 and minimal.json == {"status": "ready"}
    assert not _telemetry_in(client.get("/ready").headers)  # no key: no telemetry


def test_operator_key_is_not_a_tenant_key(make_app) -> None:
    client = make_app().test_client(api_key="")
    for headers in (OPERATOR, {"X-API-Key": TEST_OPERATOR_KEY}):
        response = client.post("/generate-text", json=BODY, headers=headers)
        assert response.status_code == 401
        assert response.json["error"]["code"] == "invalid_api_key"
        assert not _telemetry_in(response.headers)


def test_a_key_in_both_lists_stops_startup(make_app) -> None:
    with pytest.raises(ConfigError, match="both OPERATOR_KEYS and the API keys"):
        make_app(OPERATOR_KEYS=TEST_API_KEY)
    digest = "sha256:" + hashlib.sha256(TEST_API_KEY.encode()).hexdigest()
    with pytest.raises(ConfigError, match="both OPERATOR_KEYS"):
        make_app(OPERATOR_KEYS=digest)


def test_operator_keys_accept_digests_and_are_redacted(make_app, caplog) -> None:
    digest = "sha256:" + hashlib.sha256(TEST_OPERATOR_KEY.encode()).hexdigest()
    with caplog.at_level(logging.INFO):
        app = make_app(OPERATOR_KEYS=f" {digest} ,")
    assert app.test_client(api_key="").get("/metrics", headers=OPERATOR).status_code == 200
    assert digest not in str(app.config["OPERATOR_KEYS"])
    with caplog.at_level(logging.INFO):
        app = make_app(OPERATOR_KEYS=TEST_OPERATOR_KEY)
    assert TEST_OPERATOR_KEY not in str(app.config["OPERATOR_KEYS"])
    assert TEST_OPERATOR_KEY not in caplog.text
    with pytest.raises(ConfigError, match="OPERATOR_KEYS entry 1"):
        make_app(OPERATOR_KEYS="sha256:abc")


def test_telemetry_headers_only_for_authenticated_callers(make_app) -> None:
    client = make_app().test_client(api_key="")
    refused = client.post("/generate-text", json=BODY)
    assert refused.status_code == 401 and refused.headers["X-Request-ID"]
    assert not _telemetry_in(refused.headers)
    wrong = client.post("/generate-text", json=BODY,
                        headers={"Authorization": "Bearer wrong-key-0123456789"})
    assert wrong.status_code == 401 and not _telemetry_in(wrong.headers)
    served = client.post("/generate-text", json=BODY, headers=TENANT)
    assert served.status_code == 200 and _telemetry_in(served.headers) == TELEMETRY
    assert int(served.headers["X-Batch-Size"]) >= 1
    assert not _telemetry_in(client.get("/health").headers)
    assert _telemetry_in(client.get("/health", headers=TENANT).headers) == TELEMETRY
    assert _telemetry_in(client.get("/health", headers=OPERATOR).headers) == TELEMETRY


def test_allow_anonymous_counts_as_authenticated(tiny_model, request_log, monkeypatch) -> None:
    monkeypatch.delenv("API_KEYS", raising=False)
    app = create_app({"MODEL": "synthetic:tiny", "MODELS_DIR": str(tiny_model.parent),
                      "DTYPE": "float32", "TORCH_THREADS": 1, "REQUEST_LOG": str(request_log),
                      "API_KEYS": "", "ALLOW_ANONYMOUS": True, "OPERATOR_KEYS": "",
                      "RATE_LIMIT": "", "GLOBAL_RATE_LIMIT": ""})
    served = app.test_client().post("/generate-text", json=BODY)
    assert served.status_code == 200 and _telemetry_in(served.headers) == TELEMETRY
    assert app.test_client().get("/metrics").status_code == 404  # still the operator's
    spec = app.test_client().get("/openapi.json").json
    assert "securitySchemes" not in spec["components"]
    assert set(spec["paths"]["/metrics"]["get"]["responses"]) == {"404"}


def test_through_gunicorn(tiny_model: Path, tmp_path: Path) -> None:
    """Real Gunicorn, real sockets: the harness's generated operator key readies it."""
    env = server_env(tmp_path)
    del env["OPERATOR_KEYS"]  # the harness makes one and sends it
    with GunicornServer(tmp_path, env, workers=1, inherit_env=False) as server:
        assert server.operator_key and server.ready["model"] == "synthetic:tiny"
        url = server.url
        bare = requests.get(f"{url}/metrics", timeout=10)
        tenant = requests.get(f"{url}/metrics", headers=TENANT, timeout=10)
        assert (bare.status_code, tenant.status_code) == (401, 401)
        assert bare.json()["error"]["code"] == "missing_operator_key"
        assert not _telemetry_in(bare.headers) and not _telemetry_in(tenant.headers)
        refused = requests.post(f"{url}/generate-text", json=BODY, timeout=60)
        assert refused.status_code == 401 and refused.headers["X-Request-ID"]
        assert not _telemetry_in(refused.headers)
        served = requests.post(f"{url}/generate-text", json=BODY, headers=TENANT, timeout=60)
        assert served.status_code == 200 and _telemetry_in(served.headers) == TELEMETRY
        scraped = requests.get(f"{url}/metrics", headers=server.operator_headers, timeout=10)
        assert scraped.status_code == 200 and scraped.headers["Content-Type"].startswith(
            "text/plain")
        requests_total = {
            (s.labels["route"], s.labels["status"]): s.value
            for f in text_string_to_metric_families(scraped.text) for s in f.samples
            if s.name == "gpt_requests_total"}
        assert requests_total[("/generate-text", "200")] == 1
        assert requests_total[("/generate-text", "401")] == 1
        assert requests.get(f"{url}/ready", timeout=10).json() == {"status": "ready"}
        detailed = requests.get(f"{url}/ready", headers=server.operator_headers, timeout=10)
        assert detailed.json()["limits"]["max_queue"] == 32
        assert requests.get(f"{url}/health", timeout=10).json() == {"status": "ok"}
    assert server.operator_key not in server.log_text()


def test_the_spec_says_metrics_needs_the_operator_key(make_app) -> None:
    spec = make_app().test_client(api_key="").get("/openapi.json").json
    operation = spec["paths"]["/metrics"]["get"]
    assert operation["security"] == [{"operatorKey": []}]
    assert set(operation["responses"]) == {"200", "401"}
    assert spec["components"]["securitySchemes"]["operatorKey"]["scheme"] == "bearer"


def test_keys_guessed_on_public_routes_are_throttled_too(make_app) -> None:
    """/metrics and /ready answer more to a valid key, so they must not be a free oracle
    for guessing either: wrong keys there count against AUTH_FAILURE_LIMIT like anywhere."""
    client = make_app(AUTH_FAILURE_LIMIT="5/minute").test_client(api_key="")
    statuses = [client.get("/metrics", headers={"Authorization": f"Bearer guess-{i:020d}"})
                .status_code for i in range(5)]
    statuses.append(client.get("/ready", headers={"X-API-Key": "guess-x"}).status_code)
    assert statuses[:5] == [401] * 5 and statuses[5] == 429
    throttled = client.get("/metrics", headers=OPERATOR)  # even the right key, meanwhile
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
    assert client.get("/health").status_code == 200  # probes without a key are not guesses
