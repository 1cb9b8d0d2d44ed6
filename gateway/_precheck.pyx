# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled pre-checks (issue 11 item 8): the strict form parser and the strict compact-JWS parser.

Same results, same exceptions and reason codes as the pure-Python originals they replace
(gateway/server/form.py `parse_form`, gateway/jose/jws.py `parse_compact`); the pure versions stay the
fallback (gateway/precheck.py chooses at import) and tests/property/test_compiled_equivalence.py holds the
two equal. JSON is still decoded by the standard library's C scanner with the same settings (a hook
that refuses duplicate member names, NaN/Infinity refused), so the JSON dialect cannot drift.
"""

import json

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Contains, PyDict_SetItem
from cpython.unicode cimport PyUnicode_DecodeUTF8

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)

# Bound by the pure modules at import (gateway/precheck.py): the exception classes and reason values
# the compiled functions raise, so both paths raise the very same objects.
cdef object _form_fallback = None
cdef object _FormError = None
cdef object _FORM_MALFORMED = None
cdef object _TOO_MANY_PARAMETERS = None
cdef object _REPEATED_PARAMETER = None
cdef object _jws_fallback = None
cdef object _CompactJWS = None
cdef object _JWSFormatError = None


def bind_form(fallback, form_error, malformed, too_many, repeated):
    """The pure parser (used for input that is not `bytes`), its exception class and reasons."""
    global _form_fallback, _FormError, _FORM_MALFORMED, _TOO_MANY_PARAMETERS, _REPEATED_PARAMETER
    _form_fallback, _FormError = fallback, form_error
    _FORM_MALFORMED, _TOO_MANY_PARAMETERS, _REPEATED_PARAMETER = malformed, too_many, repeated


def bind_jws(fallback, compact_jws, jws_format_error):
    """The pure parser (used for input that is not `str`), the result class and the exception class."""
    global _jws_fallback, _CompactJWS, _JWSFormatError
    _jws_fallback, _CompactJWS, _JWSFormatError = fallback, compact_jws, jws_format_error


cdef inline int _hex(unsigned char c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 65 <= c <= 70:
        return c - 55
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef str _form_decode(const unsigned char* p, Py_ssize_t n, char* out):
    # '+' is a space, %XX a byte (every '%' was checked to be followed by two hex digits); strict UTF-8.
    cdef Py_ssize_t i = 0, k = 0
    cdef unsigned char c
    while i < n:
        c = p[i]
        if c == 43:  # '+'
            out[k] = 32
            i += 1
        elif c == 37:  # '%'
            out[k] = <char>(_hex(p[i + 1]) * 16 + _hex(p[i + 2]))
            i += 3
        else:
            out[k] = <char>c
            i += 1
        k += 1
    return PyUnicode_DecodeUTF8(out, k, "strict")


def parse_form(body, *, max_params):
    """Parse a token request body; refuse bad encodings, too many and repeated parameters."""
    if type(body) is not bytes or type(max_params) is not int:
        return _form_fallback(body, max_params=max_params)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    if n == 0:
        return {}
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t i, pairs = 1
    cdef unsigned char c
    # One pass: printable ASCII without space only, each '%' followed by two hex digits; count the pairs.
    for i in range(n):
        c = p[i]
        if c < 33 or c > 126:
            raise _FormError(_FORM_MALFORMED)
        if c == 37 and (i + 2 >= n or _hex(p[i + 1]) < 0 or _hex(p[i + 2]) < 0):
            raise _FormError(_FORM_MALFORMED)
        if c == 38:
            pairs += 1
    if pairs > max_params:
        raise _FormError(_TOO_MANY_PARAMETERS)
    # Decoded text is never longer than its encoding: one scratch buffer for every name and value.
    cdef bytes scratch = PyBytes_FromStringAndSize(NULL, n)
    cdef char* out = PyBytes_AS_STRING(scratch)
    cdef dict form = {}
    cdef Py_ssize_t start = 0, end, eq
    cdef str key, text
    while start <= n:
        end = start
        eq = -1
        while end < n and p[end] != 38:
            if eq < 0 and p[end] == 61:
                eq = end
            end += 1
        if eq <= start:  # no '=' (-1) or an empty name
            raise _FormError(_FORM_MALFORMED)
        try:
            key = _form_decode(p + start, eq - start, out)
            text = _form_decode(p + eq + 1, end - eq - 1, out)
        except UnicodeDecodeError:
            raise _FormError(_FORM_MALFORMED) from None
        if PyDict_Contains(form, key):
            # RFC 6749 §3.2: request parameters MUST NOT be included more than once.
            raise _FormError(_REPEATED_PARAMETER)
        PyDict_SetItem(form, key, text)
        start = end + 1
    return form


# base64url alphabet (RFC 4648 §5) -> 6-bit value, -1 elsewhere.
cdef signed char _B64[256]
cdef const unsigned char* _ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
cdef int _j
for _j in range(256):
    _B64[_j] = -1
for _j in range(64):
    _B64[_ALPHABET[_j]] = _j


cdef bytes _b64url_decode(const unsigned char* s, Py_ssize_t n):
    # The segment already passed the alphabet check; only the length and the unused low bits of the
    # last character (RFC 4648 §3.5: must be zero, else several spellings decode alike) remain.
    cdef Py_ssize_t rem = n % 4
    if rem == 1:
        raise _JWSFormatError("jwt_malformed")
    if rem == 2 and (_B64[s[n - 1]] & 0x0F):
        raise _JWSFormatError("jwt_malformed")
    if rem == 3 and (_B64[s[n - 1]] & 0x03):
        raise _JWSFormatError("jwt_malformed")
    cdef Py_ssize_t size = (n // 4) * 3 + (rem - 1 if rem else 0)
    cdef bytes raw = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t i = 0, k = 0
    cdef unsigned int v
    while i + 4 <= n:
        v = (<unsigned int>_B64[s[i]] << 18) | (<unsigned int>_B64[s[i + 1]] << 12) \
            | (<unsigned int>_B64[s[i + 2]] << 6) | <unsigned int>_B64[s[i + 3]]
        out[k] = (v >> 16) & 0xFF
        out[k + 1] = (v >> 8) & 0xFF
        out[k + 2] = v & 0xFF
        i += 4
        k += 3
    if rem == 2:
        v = (<unsigned int>_B64[s[i]] << 18) | (<unsigned int>_B64[s[i + 1]] << 12)
        out[k] = (v >> 16) & 0xFF
    elif rem == 3:
        v = (<unsigned int>_B64[s[i]] << 18) | (<unsigned int>_B64[s[i + 1]] << 12) \
            | (<unsigned int>_B64[s[i + 2]] << 6)
        out[k] = (v >> 16) & 0xFF
        out[k + 1] = (v >> 8) & 0xFF
    return raw


class _DuplicateKey(Exception):
    pass


def _object_without_duplicates(list pairs):
    # RFC 7515 §4 / RFC 7519 §4: reject duplicate member names.
    cdef dict obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey
    return obj


def _reject_constant(name):
    # RFC 8259 §6: NaN and Infinity are not JSON.
    raise ValueError(f"non-standard JSON constant {name}")


_DECODER = json.JSONDecoder(object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant)
# The decoder's own scanner (the C one, json.scanner.c_make_scanner, as JSONDecoder.decode uses), called
# directly: _decode below is JSONDecoder.decode + raw_decode without their two Python frames.
_SCAN_ONCE = _DECODER.scan_once


cdef inline Py_ssize_t _skip_ws(str text, Py_ssize_t i, Py_ssize_t n):
    # json.decoder.WHITESPACE: [ \t\n\r]*
    cdef Py_UCS4 ch
    while i < n:
        ch = text[i]
        if ch != 32 and ch != 9 and ch != 10 and ch != 13:
            break
        i += 1
    return i


cdef object _decode(str text):
    cdef Py_ssize_t n = len(text)
    cdef Py_ssize_t end
    try:
        value, end = _SCAN_ONCE(text, _skip_ws(text, 0, n))
    except StopIteration:
        raise ValueError("Expecting value") from None
    if _skip_ws(text, end, n) != n:
        raise ValueError("Extra data")
    return value


cdef dict _decode_json_object(const unsigned char* s, Py_ssize_t n, Py_ssize_t max_bytes, str too_large):
    # Cap on the encoded length first, so an oversized segment is never decoded.
    if n > (4 * max_bytes + 2) // 3:
        raise _JWSFormatError(too_large)
    cdef bytes raw = _b64url_decode(s, n)
    if PyBytes_GET_SIZE(raw) > max_bytes:
        raise _JWSFormatError(too_large)
    try:
        # Strict UTF-8 first (JSON in UTF-16/32 is not accepted), then the standard library's decoder.
        value = _decode(PyUnicode_DecodeUTF8(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), "strict"))
    except _DuplicateKey:
        raise _JWSFormatError("jwt_duplicate_key") from None
    except (ValueError, RecursionError):
        raise _JWSFormatError("jwt_malformed") from None
    if type(value) is not dict:
        raise _JWSFormatError("jwt_not_object")
    return <dict>value


cdef object _MAX_CAP = 2**40


def parse_compact(token, *, max_header_bytes, max_payload_bytes):
    """Split and decode a compact JWS; raise JWSFormatError with a reason code."""
    if (
        type(token) is not str or type(max_header_bytes) is not int or type(max_payload_bytes) is not int
        or not 0 <= max_header_bytes <= _MAX_CAP or not 0 <= max_payload_bytes <= _MAX_CAP
    ):
        # Anything the config model cannot produce goes to the pure parser: no C overflow to reason about.
        return _jws_fallback(token, max_header_bytes=max_header_bytes, max_payload_bytes=max_payload_bytes)
    if not PyUnicode_IS_ASCII(token):
        raise _JWSFormatError("jwt_malformed")
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(token)
    cdef const unsigned char* s = <const unsigned char*>PyUnicode_DATA(token)
    cdef Py_ssize_t i, dot1 = -1, dot2 = -1
    cdef unsigned char c
    # Three non-empty base64url segments separated by two dots; nothing else (no '=', whitespace).
    for i in range(n):
        c = s[i]
        if c == 46:
            if dot1 < 0:
                dot1 = i
            elif dot2 < 0:
                dot2 = i
            else:
                raise _JWSFormatError("jwt_malformed")
        elif _B64[c] < 0:
            raise _JWSFormatError("jwt_malformed")
    if dot2 < 0 or dot1 == 0 or dot2 == dot1 + 1 or dot2 == n - 1:
        raise _JWSFormatError("jwt_malformed")
    header = _decode_json_object(s, dot1, max_header_bytes, "jwt_header_too_large")
    payload = _decode_json_object(s + dot1 + 1, dot2 - dot1 - 1, max_payload_bytes, "jwt_payload_too_large")
    signature = _b64url_decode(s + dot2 + 1, n - dot2 - 1)
    if not signature:
        raise _JWSFormatError("jwt_malformed")
    signing_input = PyBytes_FromStringAndSize(<const char*>s, dot2)
    return _CompactJWS(header, payload, signing_input, signature)
