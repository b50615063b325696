"""Secrets in configs and summaries never reach a backend."""

from __future__ import annotations

import re

import pytest

import steplog
from steplog._redact import REDACTED


def run_with(config, summary=None, **kwargs):
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(mem, **kwargs)
    info = tracker.init(config)
    tracker.finish(summary)
    return info, mem


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "HF_TOKEN",
        "hf_token",
        "api_key",
        "openaiApiKey",
        "OPENAI-API-KEY",
        "Authorization",
        "client_secret",
        "aws_secret_access_key",
        "private_key",
        "credentials",
        "auth",
    ],
)
def test_secret_looking_keys_are_redacted(key):
    """Values under secret-looking keys are replaced before any backend sees them."""
    info, mem = run_with({key: "s3cr3t", "lr": 0.1})
    assert info.config == {key: REDACTED, "lr": 0.1}
    assert mem.config == {key: REDACTED, "lr": 0.1}


@pytest.mark.parametrize(
    "key",
    [
        "max_new_tokens",
        "tokenizer",
        "author",
        "num_tokens",
        "secretary",
        "passes",
        "token_budget",
        "password_min_length",
        "api_key_file",
        "token_path",
    ],
)
def test_ordinary_keys_that_merely_contain_a_secret_word_are_kept(key):
    """Only a secret word that ends the key matches: max_new_tokens, token_budget or
    password_min_length name numbers (or files) about secrets, not secrets."""
    info, _ = run_with({key: 20})
    assert info.config == {key: 20}


def test_nested_configs_experiment_config_and_summary_are_redacted(runs_root):
    """Nested dicts (inside lists too), experiment_config and the summary are covered."""
    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(
        backend, experiment_config={"wandb": {"api_key": "k", "project": "p"}}
    )
    tracker.init({"servers": [{"host": "h", "password": "pw"}]})
    tracker.finish({"session": {"cookie": "c", "ok": 1}})
    text = backend.path.read_text()
    assert "pw" not in text.replace("password", "")
    assert '"k"' not in text
    run = steplog.read_run(backend.path)
    assert run.config == {
        "wandb": {"api_key": REDACTED, "project": "p"},
        "servers": [{"host": "h", "password": REDACTED}],
    }
    assert run.summary == {"session": {"cookie": REDACTED, "ok": 1}}


def test_the_callers_config_is_not_modified():
    """Redaction works on a copy."""
    config = {"token": "t", "nested": {"password": "p"}}
    run_with(config)
    assert config == {"token": "t", "nested": {"password": "p"}}


def test_custom_pattern_and_opt_out():
    """redact= takes a custom pattern; None turns redaction off."""
    info, _ = run_with({"my_field": 1, "token": "t"}, redact=r"^my_field$")
    assert info.config == {"my_field": REDACTED, "token": "t"}
    info, _ = run_with({"token": "t"}, redact=None)
    assert info.config == {"token": "t"}
    info, _ = run_with({"Key": 1}, redact=re.compile("key"))
    assert info.config == {"Key": REDACTED}


def test_bad_pattern_raises_at_construction():
    """An invalid pattern is a clear error when the tracker is made."""
    with pytest.raises(ValueError, match="redact"):
        steplog.Tracker(steplog.MemoryBackend(), redact="(")
    with pytest.raises(TypeError, match="redact"):
        steplog.Tracker(steplog.MemoryBackend(), redact=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:pw@h:5432/db", "postgres://u:<redacted>@h:5432/db"),
        ("redis://:s3cr3t@cache/0", "redis://:<redacted>@cache/0"),
        (
            "https://h/x?token=abc&page=2&api_key=q",
            "https://h/x?token=<redacted>&page=2&api_key=<redacted>",
        ),
        ("see http://a:b@c and https://d", "see http://a:<redacted>@c and https://d"),
        ("https://example.com/path?page=2", "https://example.com/path?page=2"),
        ("ssh://git@github.com/org/repo", "ssh://git@github.com/org/repo"),
    ],
)
def test_credentials_inside_urls_are_redacted_under_any_key(url, expected):
    """A password in a URL, or a query parameter with a secret name, is replaced
    wherever the URL is (an innocent key, a list), in config and summary alike."""
    info, mem = run_with({"db_url": url, "mirrors": [url]}, {"endpoint": url})
    assert info.config == {"db_url": expected, "mirrors": [expected]}
    assert mem.summary == {"endpoint": expected}


def test_url_redaction_is_off_with_redaction():
    """redact=None turns URL redaction off too."""
    info, _ = run_with({"db_url": "postgres://u:pw@h/db"}, redact=None)
    assert info.config == {"db_url": "postgres://u:pw@h/db"}
