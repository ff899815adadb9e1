"""Server configuration: defaults in one place, environment on top, a mapping in tests.

One pydantic-settings class holds every key with its default, type and reason. The
environment (variables of the same name) overrides the defaults and a mapping passed to
``create_app()`` overrides both; every value is validated, so ``MAX_BATCH_SIZE=eight`` or
``IGNORE_EOS=ture`` stops startup with a ``ConfigError`` naming the variable and what it
accepts, instead of crashing in ``int()`` or silently reading as false. Light on purpose
(no Flask, no torch): gunicorn.conf.py imports it, and reads its own keys (workers, bind,
timeouts, TLS files, logs) validated the same way from ``GunicornSettings``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

# How a boolean is written (pydantic's lax booleans), for the error message.
_BOOLEANS = "1/0, true/false, yes/no, on/off"
# An empty variable means "not set" for the keys whose default is derived (None).
_Unset = BeforeValidator(lambda value: None if value == "" else value)


class ConfigError(RuntimeError):
    """The configuration is unusable; the server must not start."""


class Settings(BaseSettings):
    """Every key the server reads, with its default and why."""

    # Names as in the environment (MAX_BATCH_SIZE); unrelated variables are not settings.
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore",
                                      validate_default=True)

    # What to serve: a local HF folder, a hub id (needs internet), or synthetic:<preset>.
    MODEL: str = "synthetic:gpt2-large"
    # Where synthetic models are built and cached (git-ignored).
    MODELS_DIR: str = "models"
    # auto = time float32 (BLAS and oneDNN paths), float16 weights and bfloat16 (oneDNN and,
    # on AVX-512 BF16 CPUs, the native kernel) at startup and serve the fastest
    # (server/engine/kernels.py); or a fixed float32 | float16 | bfloat16 (both bf16 paths timed) |
    # bfloat16+native (that kernel only) | int8 (torch's and, where it runs, the native int8
    # kernel, timed) | int8+native (the project's int8 kernel only, server/engine/native_int8.py).
    # float16 = linear weights stored in fp16, computed in fp32 (server/engine/quantize.py);
    # both fp16 paths timed: fbgemm's, and where the CPU has AVX2 + FMA + F16C the project's
    # kernel, float16+native alone (server/engine/native_f16.py: a tied LM head reads the fp16
    # embedding table, one copy).
    DTYPE: Literal["auto", "float32", "float16", "float16+native", "bfloat16",
                   "bfloat16+native", "int8", "int8+native"] = "auto"
    # Let DTYPE=auto choose int8 too when it measures fastest. Off by default: int8 changes
    # the text (judge it on a real checkpoint first); on AVX2-only CPUs it is 3-9x faster.
    ALLOW_INT8: bool = False
    # Prompt tokens fed per step (chunked prefill): long prompts are read in pieces between
    # decode steps, so running streams keep producing tokens while an article is read.
    PREFILL_CHUNK: int = 128
    # KV cache storage: model = as computed (full width); float16 halves it when the model
    # computes in float32 (widened on read into a reused buffer, as llama.cpp's f16 cache);
    # auto = float16 unless the weights are served in float32 (server/engine/row_cache.py). On the
    # AMD EPYC Zen 4 a mixed 8-row decode step took the same time either way (scripts/
    # bench memory) and the cache's memory halved. int8 (opt-in) halves float16's again: int8
    # with a float32 scale per position and head (server/engine/kv_int8.py; OpenVINO's u8 cache).
    KV_DTYPE: Literal["auto", "float16", "int8", "model"] = "auto"
    # KV positions the running rows of a worker may reserve together (prompt + max_new_tokens
    # each, as llama.cpp's -c); a job that does not fit waits in the queue, first come first
    # served, and admission's forecast counts that wait. 0 = no limit beyond MAX_BATCH_SIZE;
    # unset = KV_CACHE_MB in positions of the served model's cache (server/engine/kv_budget.py).
    KV_TOKENS: Annotated[NonNegativeInt | None, _Unset] = None
    # MiB of KV cache a worker's running rows may reserve together, when KV_TOKENS is unset:
    # memory, not positions, is what bounds a worker, and a position's bytes differ tenfold
    # between models (184,320 B on gpt2-large, 28,672 on qwen2.5-1.5b's 2 KV heads). 225 MiB
    # is 1,280 positions of gpt2-large's float16 cache (a full 1,024-token context and some),
    # the count that on the default mix served as many requests as no limit (116 each, AMD
    # EPYC Zen 4) with RAM per request p95 101 MB instead of 342 (docs/results.md, KV memory).
    KV_CACHE_MB: PositiveFloat = 225.0
    # Finished rows' KV caches a worker keeps so that later prompts starting the same way
    # copy those positions instead of computing them (server/engine/prefix_cache.py; llama.cpp's
    # cache_prompt). They hold at most the KV budget's positions beside the running rows
    # (KV_TOKENS, or KV_CACHE_MB's), one per prompt (another answer to the same prompt
    # replaces the first). 32: on the OpenAI mix's repeating prompts 8 rows had evicted a
    # prompt before its next use; 32 served 29% more tokens/s at 8 users for 59 MB more PSS
    # on qwen2.5-1.5b (docs/reference.md, One entry per prompt). 0 = none.
    PREFIX_CACHE_ROWS: NonNegativeInt = 32
    # Tenancy (docs/security.md, Tenancy): each API key is a tenant. The queue serves keys
    # in turn, fewest running rows first (server/engine/fair_queue.py), and a key's share of a
    # worker is bounded by these; 0 = the whole worker's (MAX_BATCH_SIZE, KV budget,
    # MAX_QUEUE), so that one key alone, as in a load test, may still use all of it.
    # Lower them to reserve room for other keys: rows already running are not preempted.
    KEY_MAX_ROWS: NonNegativeInt = 0
    KEY_KV_TOKENS: NonNegativeInt = 0
    KEY_MAX_QUEUE: NonNegativeInt = 0
    # Most KV positions (prompt + max_new_tokens) one request may reserve; more is a 413
    # naming the field. 0 = the KV budget (a request that alone would exceed it is
    # refused instead of holding the whole worker).
    MAX_REQUEST_KV_TOKENS: NonNegativeInt = 0
    # A queued job that does not fit yet (KV room) may be overtaken by later jobs that do,
    # until it has waited this long; then none overtakes it, so it cannot starve. Well
    # under REQUEST_TIMEOUT_S, so an overtaken job still has most of its time left.
    QUEUE_AGING_S: float = 20.0
    # Torch intra-op threads per worker; 0 = cores / workers, set after fork.
    TORCH_THREADS: int = 0
    # Most requests in the running set: rows join and leave it between steps
    # (server/engine/scheduler.py).
    MAX_BATCH_SIZE: int = 8
    # Requests waiting beyond the running batch; more are refused with 503 (never OOM).
    MAX_QUEUE: int = 32
    # Generation requests in flight across all workers together; more get a fast 503
    # (server/web/admission.py). Workers x (MAX_BATCH_SIZE + MAX_QUEUE) is what they could hold.
    MAX_IN_FLIGHT: int = 64
    # A request not finished after this many seconds gets 504 and its slot is freed.
    REQUEST_TIMEOUT_S: float = 120.0
    # Refuse (503) a request whose predicted finish, from the measured step time and the
    # rows ahead of it, is past REQUEST_TIMEOUT_S (server/engine/scheduler.py); off = admit and 504.
    ADMIT_PREDICTED: bool = True
    # Seconds a client is told to wait after a 503.
    RETRY_AFTER_S: int = 2
    # Defaults and caps on generation lengths.
    DEFAULT_MAX_NEW_TOKENS: int = 32
    MAX_NEW_TOKENS_CAP: int = 256
    # Longest accepted request text in characters, checked before tokenizing.
    MAX_INPUT_CHARS: int = 8000
    # Largest request body in bytes (Flask rejects bigger ones with 413 before parsing).
    MAX_CONTENT_LENGTH: int = 64 * 1024
    # Generate until max_new_tokens even after <|endoftext|>: fixed-length benchmarks.
    IGNORE_EOS: bool = False
    # Move the weights onto 2 MB pages once loaded (server/engine/huge_pages.py): a decode
    # step streams them all, and fewer page boundaries read them faster.
    HUGE_PAGES: bool = True
    # Tokens generated by each worker's warm-up pass before /ready says yes.
    WARMUP_TOKENS: int = 4
    # One JSON line per request is appended here by every worker ("" = no log).
    REQUEST_LOG: str = "logs/server_requests.jsonl"
    # Seconds between per-worker memory samples (RSS/USS/PSS).
    MEMORY_SAMPLE_S: PositiveFloat = 0.5  # 0 would spin the sampling thread
    # Accepted API keys, comma-separated (hashed at startup, never logged).
    API_KEYS: str = ""
    # File of API keys, one per line; "sha256:<hex>" lines keep plaintext keys off disk.
    API_KEYS_FILE: str = ""
    # Serve without keys when none are configured; otherwise the server refuses to start.
    ALLOW_ANONYMOUS: bool = False
    # Operator credential(s), comma-separated ("sha256:<hex>" entries too; hashed at startup,
    # never logged): they open /metrics and /ready's details, and no tenant route. Empty by
    # default so that nothing about the server's load is served until an operator asks for
    # it: /metrics answers 404 and /ready only {"status"} (server/web/operator_auth.py).
    OPERATOR_KEYS: str = ""
    # Per API key (flask-limiter syntax, ";"-separated; "" = off). Generous by default so a
    # load test with one key measures the model, not the limiter; tighten it per deployment.
    RATE_LIMIT: str = "600/minute;20/second"
    # Ceiling over all keys together ("" = off).
    GLOBAL_RATE_LIMIT: str = "3000/minute;100/second"
    # Where limits are counted: memory:// (per worker) or redis://host:port (exact, shared).
    RATELIMIT_STORAGE_URI: str = "memory://"
    # Seconds a client gets to send a request's line and headers (counted from its connection
    # or, kept alive, its next first byte), and again to send its body; a connection that
    # misses either is closed (a missed body gets a 408 first). nginx allows 60 s for each;
    # 10 s is ample for this API's bodies (at most MAX_CONTENT_LENGTH, 64 KiB) and bounds what
    # a stalled client holds (server/web/worker.py, docs/security.md "Slow and hostile clients").
    CLIENT_READ_TIMEOUT_S: PositiveFloat = 10.0
    # Failed authentications (a wrong key) one client address may make before it is refused
    # with 429 auth_throttled, keyed requests included, counted in RATELIMIT_STORAGE_URI
    # (flask-limiter syntax; "" = off). 20 a minute leaves room for a mistyped key and makes
    # guessing a key (2^128 of them) hopeless (server/web/auth_throttle.py).
    AUTH_FAILURE_LIMIT: str = "20/minute"


DEFAULTS: dict[str, Any] = {name: field.default for name, field in Settings.model_fields.items()}

class GunicornSettings(BaseSettings):
    """Every variable gunicorn.conf.py reads, with its default; the reason for each value is
    beside its Gunicorn setting in gunicorn.conf.py. None = derived there from the server's
    settings; the command line (``--workers 3``) and GUNICORN_CMD_ARGS still win over all."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore",
                                      validate_default=True)

    # Workers (Gunicorn's and the PaaS convention): one on every core does best here.
    WEB_CONCURRENCY: PositiveInt = 1
    # Port on 127.0.0.1 when BIND is not given (the PaaS convention).
    PORT: Annotated[int, Field(ge=0, le=65535)] = 8000
    # host:port to listen on; unset = 127.0.0.1:PORT (loopback unless told otherwise).
    BIND: Annotated[str | None, _Unset] = None
    # Load the model once in the master and fork (0 only to measure what preloading saves).
    GUNICORN_PRELOAD: bool = True
    # Request threads per worker; unset = MAX_BATCH_SIZE + MAX_QUEUE + 8.
    GUNICORN_THREADS: Annotated[PositiveInt | None, _Unset] = None
    # Seconds a silent worker lives before the master kills it; above REQUEST_TIMEOUT_S.
    GUNICORN_TIMEOUT: NonNegativeInt = 180
    # Seconds in-flight requests get on SIGTERM; unset = REQUEST_TIMEOUT_S + 10.
    GUNICORN_GRACEFUL_TIMEOUT: Annotated[NonNegativeInt | None, _Unset] = None
    # Requests before a worker is recycled (0 = never); a rare safety net.
    GUNICORN_MAX_REQUESTS: NonNegativeInt = 10000
    # Up to this many more, drawn per worker; unset = GUNICORN_MAX_REQUESTS // 10.
    GUNICORN_MAX_REQUESTS_JITTER: Annotated[NonNegativeInt | None, _Unset] = None
    # Seconds an idle client connection stays open; above Locust users' think time.
    GUNICORN_KEEPALIVE: NonNegativeInt = 30
    # Where the master writes its pid ("" = nowhere), for the memory sampler.
    GUNICORN_PIDFILE: str = ""
    # Access log destination: "-" = stderr, "" = off.
    GUNICORN_ACCESSLOG: str = "-"
    # PEM certificate and key for direct HTTPS ("" = plain HTTP, TLS at a proxy).
    TLS_CERTFILE: str = ""
    TLS_KEYFILE: str = ""


GUNICORN_DEFAULTS: dict[str, Any] = {name: field.default
                                     for name, field in GunicornSettings.model_fields.items()}


def _problem(error: dict[str, Any], given: Mapping[str, Any],
             fields: dict[str, Any] = Settings.model_fields) -> str:
    name = str(error["loc"][0])
    source = "given" if name in given else "environment"
    accepted = f" (use {_BOOLEANS})" if fields[name].annotation is bool else ""
    return f"{name}={error['input']!r} ({source}): {error['msg']}{accepted}"


def load_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the defaults, updated by the environment, then by ``overrides``.

    Raises ConfigError naming each invalid setting. Keys of ``overrides`` that are not
    settings (Flask's own, e.g. TESTING) are passed through unchecked.
    """
    overrides = dict(overrides or {})
    known = {k: v for k, v in overrides.items() if k in Settings.model_fields}
    try:
        settings = Settings(**known)
    except ValidationError as error:
        problems = [_problem(e, known) for e in error.errors(include_url=False)]
        raise ConfigError("invalid setting(s): " + "; ".join(problems)) from None
    return {**overrides, **settings.model_dump()}


def load_gunicorn_settings() -> dict[str, Any]:
    """Return gunicorn.conf.py's keys: the defaults, updated by the environment.

    Raises ConfigError naming each invalid variable, as ``load_config`` does.
    """
    try:
        return GunicornSettings().model_dump()
    except ValidationError as error:
        problems = [_problem(e, {}, GunicornSettings.model_fields)
                    for e in error.errors(include_url=False)]
        raise ConfigError("invalid Gunicorn setting(s): " + "; ".join(problems)) from None
