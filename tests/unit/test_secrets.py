import logging

from timmy_magic.privacy.redact import REDACT, mask


def test_mask():
    assert mask("sk-abcdefghijklmnop1234") == "sk-...1234"
    assert mask("short") == "***"
    assert mask(None) == "(none)"


def test_redactor_and_log_filter(caplog):
    key = "sk-planted-KEY-abcdefgh9876"
    REDACT.add([key])
    assert REDACT(f"bad key {key}!") == "bad key sk-...9876!"
    with caplog.at_level(logging.WARNING, logger="timmy_magic"):
        logging.getLogger("timmy_magic.routing.router").warning("failed with %s", key)
    assert key not in caplog.text and "sk-...9876" in caplog.text
