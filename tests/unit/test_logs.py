"""Operator log formats: every event one line, a traceback one field, URLs' userinfo masked."""

from __future__ import annotations

import io
import json
import logging

from gateway.logs import JSONFormatter, TextFormatter


def _emit(formatter: logging.Formatter) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("test.logs")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("cannot reach redis://:hunter2@db:6379/0\nsecond line")
        except RuntimeError:
            logger.exception("failed\nfor https://u:p@as.example/token", extra={"client": "acme", "n": 3})
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_json_traceback_is_one_field():
    output = _emit(JSONFormatter())
    assert output.count("\n") == 1
    record = json.loads(output)
    assert record["level"] == "error" and record["client"] == "acme" and record["n"] == 3
    assert record["message"] == "failed\nfor https://***@as.example/token"
    assert record["exception"].startswith("Traceback") and "RuntimeError" in record["exception"]
    assert "hunter2" not in output and "u:p@" not in output


def test_text_event_is_one_line():
    output = _emit(TextFormatter())
    assert output.count("\n") == 1
    assert " ERROR test.logs failed\\nfor https://***@as.example/token client=acme n=3 exception=Traceback" in output
    assert "hunter2" not in output
