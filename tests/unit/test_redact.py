"""Secret masking: the process-wide set, same-length masking, logging filter (pure logic)."""

from __future__ import annotations

import io
import logging

from phonehome_jump.inventory import SecretRef
from phonehome_jump.redact import MASK, RedactingFilter, Redactor, add_secret, mask


def test_masks_longest_first_and_keeps_length_when_asked():
    r = Redactor()
    r.add("abc")
    r.add("abcdef")
    r.add("")               # nothing to mask
    assert r.mask("x abcdef y abc") == f"x {MASK} y {MASK}"
    assert r.mask("x abcdef y", keep_length=True) == "x ****** y"
    assert r.mask_data({"a": ["abc", 1, {"b": "zabcz"}]}) == {"a": [MASK, 1, {"b": f"z{MASK}z"}]}


def test_resolving_a_reference_registers_the_value(monkeypatch, tmp_path):
    monkeypatch.setenv("PHJ_TEST_CANARY", "canary-env-7f3a91")
    assert SecretRef.parse("env:PHJ_TEST_CANARY").resolve("test") == "canary-env-7f3a91"
    secret_file = tmp_path / "s"
    secret_file.write_text("canary-file-c0ffee\n")
    secret_file.chmod(0o600)
    assert SecretRef.parse(f"file:{secret_file}").resolve("test") == "canary-file-c0ffee"
    assert mask("env canary-env-7f3a91 file canary-file-c0ffee") == f"env {MASK} file {MASK}"


def test_logging_filter_masks_messages_args_and_tracebacks():
    add_secret("canary-log-5e5e5e")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.Logger("phj-test-redact")
    logger.addHandler(handler)
    logger.warning("password was %s", "canary-log-5e5e5e")
    try:
        raise ValueError("boom canary-log-5e5e5e")
    except ValueError:
        logger.exception("failed")
    text = stream.getvalue()
    assert "canary-log-5e5e5e" not in text
    assert "password was ********" in text and "ValueError: boom ********" in text
