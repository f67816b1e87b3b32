"""Settings: environment prefix, defaults, fail-fast validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings, describe_error


def test_defaults_and_env_prefix(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("MODELSERVE_")]:
        monkeypatch.delenv(name)  # the defaults, not this shell's set-up
    monkeypatch.setenv("MODELSERVE_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("MODELSERVE_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("MODELSERVE_LOG_LEVEL", "debug")
    monkeypatch.setenv("MODELSERVE_API_KEY", "")
    s = Settings()
    assert s.model_dir == model_dir and s.max_batch_size == 4 and s.log_level == "DEBUG"
    assert s.api_key is None and s.device == "auto" and s.port == 8000
    assert s.default_classifier == "alexnet-cifar10" and s.default_vae == "vae-mnist"
    assert s.batch_timeout_s == pytest.approx(s.batch_timeout_ms / 1000)


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), ("true", True), ("false", False)])
def test_prepack_linear_is_auto_unless_set_on_or_off(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, value: str, parsed: object
) -> None:
    monkeypatch.setenv("MODELSERVE_MODEL_DIR", str(model_dir))
    monkeypatch.delenv("MODELSERVE_PREPACK_LINEAR", raising=False)
    assert Settings().prepack_linear == "auto"
    monkeypatch.setenv("MODELSERVE_PREPACK_LINEAR", value)
    assert Settings().prepack_linear == parsed


def test_default_model_dir_is_the_repositorys_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSERVE_MODEL_DIR", raising=False)
    assert Settings().model_dir == Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"MODELSERVE_MODEL_DIR": "/nonexistent/models"}, "does not exist"),
        ({"MODELSERVE_DEVICE": "tpu"}, "device"),
        ({"MODELSERVE_MAX_BATCH_SIZE": "0"}, "max_batch_size"),
        (
            {"MODELSERVE_MAX_BATCH_SIZE": "64", "MODELSERVE_MAX_QUEUE": "8"},
            "MAX_BATCH_SIZE .64. cannot exceed MODELSERVE_MAX_QUEUE .8.",
        ),
        # One request's items queue together: a queue smaller than the largest request would
        # answer that request 503 "overloaded" on an idle server, forever.
        (
            {"MODELSERVE_MAX_BATCH_SIZE": "8", "MODELSERVE_MAX_QUEUE": "32"},
            "MAX_BATCH_IMAGES .64. cannot exceed MODELSERVE_MAX_QUEUE .32.",
        ),
        (
            {"MODELSERVE_MAX_BATCH_IMAGES": "16", "MODELSERVE_MAX_QUEUE": "32"},
            "MAX_SAMPLE_N .64. cannot exceed MODELSERVE_MAX_QUEUE .32.",
        ),
        ({"MODELSERVE_BATCH_TIMEOUT_MS": "-1"}, "batch_timeout_ms"),
        ({"MODELSERVE_PORT": "70000"}, "port"),
        ({"MODELSERVE_LOG_FORMAT": "xml"}, "log_format"),
        ({"MODELSERVE_PREPACK_LINEAR": "sometimes"}, "prepack_linear"),
        ({"MODELSERVE_API_KEY": "short"}, "at least 8"),
        ({"MODELSERVE_MAX_UPLOAD_BYTES": "ten"}, "max_upload_bytes"),
    ],
)
def test_invalid_settings_fail_with_a_clear_message(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], words: str
) -> None:
    monkeypatch.setenv("MODELSERVE_MODEL_DIR", str(model_dir))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError, match=words):
        Settings()


def test_the_startup_message_names_each_variable_and_never_prints_the_key(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSERVE_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("MODELSERVE_API_KEY", "hunter2")  # too short, and a secret
    monkeypatch.setenv("MODELSERVE_PORT", "http")
    with pytest.raises(ValidationError) as e:
        Settings()
    message = describe_error(e.value)
    assert "MODELSERVE_API_KEY: Value error, api_key must be at least 8 characters" in message
    assert "MODELSERVE_PORT:" in message and "'http'" in message  # other values are shown
    assert "hunter2" not in message
