"""Stage form: strict application/x-www-form-urlencoded parsing (RFC 6749 §3.2, Appendix B)."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from gateway.errors import Reason
from gateway.jose.precheck import COMPILED

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# Printable ASCII without space; anything else must arrive percent-encoded (WHATWG urlencoded).
# Applied with fullmatch: `$` alone would accept a trailing newline.
_URLENCODED = re.compile(rb"[!-~]*")


class FormError(Exception):
    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.code)
        self.reason = reason


def _decode(raw: bytes) -> str:
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")


def parse_form(body: bytes, *, max_params: int) -> dict[str, str]:
    """Parse a token request body; refuse bad encodings, too many and repeated parameters."""
    if not body:
        return {}
    if not _URLENCODED.fullmatch(body) or _BAD_PERCENT.search(body):
        raise FormError(Reason.FORM_MALFORMED)
    pairs = body.split(b"&")
    if len(pairs) > max_params:
        raise FormError(Reason.TOO_MANY_PARAMETERS)
    form: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition(b"=")
        if not sep or not name:
            raise FormError(Reason.FORM_MALFORMED)
        try:
            key = _decode(name)
            text = _decode(value)
        except UnicodeDecodeError:
            raise FormError(Reason.FORM_MALFORMED) from None
        if key in form:
            # RFC 6749 §3.2: request parameters MUST NOT be included more than once.
            raise FormError(Reason.REPEATED_PARAMETER)
        form[key] = text
    return form


# The compiled parser (gateway/_precheck.pyx) when built, raising the same FormError and reasons; the pure
# one above otherwise (gateway/jose/precheck.py chooses; `parse_form_pure` stays for the differential test).
parse_form_pure = parse_form
if COMPILED is not None:
    COMPILED.bind_form(parse_form_pure, FormError, Reason.FORM_MALFORMED, Reason.TOO_MANY_PARAMETERS,
                       Reason.REPEATED_PARAMETER)
    parse_form = COMPILED.parse_form
