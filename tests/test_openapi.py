"""/openapi.json and /docs: the spec is the validating schemas, and the page renders offline."""

import threading
from collections.abc import Iterator

import jsonschema_rs
import pytest
from werkzeug.serving import make_server

from harness.processes import free_port
from harness.waiting import wait_until
from server.web.schemas import AnswerBody, GenerateBody, SummarizeBody
from tests.conftest import TEST_API_KEY

TASKS = {"/generate-text": GenerateBody, "/summarize-text": SummarizeBody,
         "/answer-question": AnswerBody}


@pytest.fixture
def spec(make_app) -> dict:
    app = make_app(MAX_NEW_TOKENS_CAP=77, MAX_INPUT_CHARS=333)
    response = app.test_client(api_key="").get("/openapi.json")
    assert response.status_code == 200
    return response.json


def test_spec_is_valid_openapi_3_1(spec) -> None:
    # The OpenAPI 3.1 meta-schema as schemathesis ships it (no download).
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    jsonschema_rs.validate(OPENAPI_31, spec)
    assert spec["openapi"] == "3.1.0"


def test_spec_lists_every_route_the_app_serves(app, spec) -> None:
    served = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    assert served - {"/openapi.json", "/docs"} == set(spec["paths"])
    for path in TASKS:
        responses = spec["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "401", "413", "415", "422", "429", "503", "504"}
        assert "Retry-After" in responses["429"]["headers"]


def test_body_schemas_are_the_validating_models_with_this_servers_limits(spec) -> None:
    for path, model in TASKS.items():
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        schema = spec["components"]["schemas"][ref["schema"]["$ref"].split("/")[-1]]
        pydantic_schema = model.model_json_schema()
        assert set(schema["properties"]) == set(pydantic_schema["properties"])
        assert schema["required"] == pydantic_schema["required"]
        assert schema["additionalProperties"] is False
        integer = next(o for o in schema["properties"]["max_new_tokens"]["anyOf"]
                       if o["type"] == "integer")
        assert (integer["minimum"], integer["maximum"]) == (1, 77)
        for name in schema["required"]:
            assert schema["properties"][name]["maxLength"] == 333


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "hi"},
        {"prompt": "hi", "max_new_tokens": 77, "temperature": 2.0, "top_p": 1.0, "seed": 0},
        {"prompt": "hi", "max_new_tokens": None, "seed": None},
        {"prompt": ""}, {"prompt": "   "}, {"prompt": "x" * 334}, {"prompt": 3},
        {"prompt": "hi", "max_new_tokens": 78}, {"prompt": "hi", "max_new_tokens": 0},
        {"prompt": "hi", "top_p": 0}, {"prompt": "hi", "temperature": 2.5},
        {"prompt": "hi", "seed": -1}, {"prompt": "hi", "extra": 1}, {"max_new_tokens": 2},
        {"prompt": "hi", "max_new_tokens": True}, {"prompt": "hi", "temperature": "1"},
    ],
)
def test_the_spec_and_the_server_agree_on_what_is_valid(make_app, spec, body) -> None:
    schema = {**spec["components"]["schemas"]["GenerateBody"]}
    valid_by_spec = jsonschema_rs.validator_for(schema).is_valid(body)
    client = make_app(MAX_NEW_TOKENS_CAP=77, MAX_INPUT_CHARS=333).test_client()
    status = client.post("/generate-text", json=body).status_code
    assert (status == 200) == valid_by_spec, status
    assert status in (200, 413, 422)


def test_docs_page_is_self_contained(make_app) -> None:
    response = make_app().test_client(api_key="").get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    page = response.get_data(as_text=True)
    for external in ("http://", "https://", "src=", "<link", "@import", "//cdn"):
        assert external not in page, external


# ---- the docs page in a real browser -----------------------------------------------------

@pytest.fixture
def live_url(make_app) -> Iterator[str]:
    """The app served over HTTP on 127.0.0.1 by werkzeug in a thread."""
    server = make_server("127.0.0.1", free_port(), make_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()
    thread.join(10)


def _wait(condition, what: str):
    """The first truthy value of ``condition()`` (the page renders, a generation answers)."""
    values = []

    def holds() -> bool:
        values.append(condition())
        return bool(values[-1])

    wait_until(holds, what, timeout_s=300, interval_s=0.1)
    return values[-1]


def test_docs_page_renders_the_spec_and_tries_a_request(browser, live_url) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{live_url}/docs")
    operations = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".op"),
                       "the operations rendered")
    assert len(operations) == 9  # 3 tasks, health, ready, metrics, 3 OpenAI routes
    assert any("/v1/chat/completions" in op.text for op in operations)
    generate = next(op for op in operations if "/generate-text" in op.text)
    assert "API key" in generate.text and "max_new_tokens" in generate.text
    assert "422 invalid_fields" in generate.text
    health = next(op for op in operations if "/health" in op.text)
    assert "API key" not in health.text
    browser.find_element(By.ID, "key").send_keys(TEST_API_KEY)
    generate.find_element(By.TAG_NAME, "summary").click()
    generate.find_element(By.TAG_NAME, "button").click()
    output = generate.find_element(By.TAG_NAME, "pre")
    _wait(lambda: output.text.strip(), "the tried request's answer")
    assert output.text.startswith("200") and '"completion_tokens"' in output.text
