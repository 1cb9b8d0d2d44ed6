"""Issue 11 item 8: the compiled pre-checks (gateway/_precheck.pyx) and the pure-Python parsers they replace
give the same answer for every input: the same result, or the same exception class with the same reason
and message. Arbitrary bytes and text, and structured near-valid inputs (almost-canonical base64url, JSON
with duplicates, NaN, deep nesting, bad UTF-8, forms with broken escapes), at several size caps. The first
tests prove the compiled module is the one in use, so this suite cannot silently compare the fallback
with itself."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.jose import jws, precheck
from gateway.server import form

ROOT = Path(__file__).resolve().parents[2]


def test_the_compiled_module_is_built_and_in_use():
    # `make venv` / `pip install` builds it on a machine with a C compiler (CI's); a build that silently
    # fell back to pure Python fails here instead of passing every equivalence test trivially.
    assert os.environ.get(precheck.PURE_ENV, "") in ("", "0"), "run the suite without BEARER_GATEWAY_PURE"
    assert precheck.COMPILED is not None, precheck.IMPLEMENTATION
    assert Path(precheck.COMPILED.__file__).suffix == ".so"
    assert precheck.IMPLEMENTATION == "compiled (Cython)"
    assert jws.parse_compact is precheck.COMPILED.parse_compact
    assert form.parse_form is precheck.COMPILED.parse_form
    assert jws.parse_compact is not jws.parse_compact_pure and form.parse_form is not form.parse_form_pure


def test_the_environment_switch_forces_the_pure_parsers():
    probe = (
        "from gateway.jose import jws, precheck; from gateway.server import form; "
        "print(precheck.IMPLEMENTATION, jws.parse_compact is jws.parse_compact_pure, "
        "form.parse_form is form.parse_form_pure)"
    )
    for value, expected in (("1", "pure-python (BEARER_GATEWAY_PURE=1) True True"), ("", "compiled (Cython) False False")):
        env = {**os.environ, precheck.PURE_ENV: value}
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected
        version = subprocess.run([sys.executable, "-m", "gateway.cli", "--version"], env=env, cwd=ROOT,
                                 capture_output=True, text=True, timeout=60)
        assert version.stdout.strip().endswith(f"(pre-checks: {expected.rsplit(' ', 2)[0]})"), version.stdout


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # any difference, of any exception, is what this compares
        return ("raised", type(exc), getattr(exc, "reason", None), str(exc), exc.args)
    # repr as well as ==: tells 1 from 1.0 and True, -0.0 from 0.0, and keeps the member order.
    return ("returned", type(result), result, repr(result))


def same_form(body: Any, max_params: int) -> None:
    compiled = outcome(form.parse_form, body, max_params=max_params)
    assert compiled == outcome(form.parse_form_pure, body, max_params=max_params), body


def same_jws(token: Any, max_header_bytes: int, max_payload_bytes: int) -> None:
    caps = {"max_header_bytes": max_header_bytes, "max_payload_bytes": max_payload_bytes}
    compiled = outcome(jws.parse_compact, token, **caps)
    assert compiled == outcome(jws.parse_compact_pure, token, **caps), token


# --- form ---------------------------------------------------------------------------------------------

FORM_PIECES = [
    "a", "Z", "grant_type", "assertion", "=", "==", "&", "&&", "+", "%", "%2", "%2B", "%20", "%3D", "%26",
    "%zz", "%C3%A9", "%c3%a9", "%FF", "%C3", "%ED%A0%80", "%F0%9F%98%80", "%00", "~", "!", "\x7f", " ", "\n", "é",
]
form_bodies = st.lists(st.sampled_from(FORM_PIECES), max_size=30).map(lambda parts: "".join(parts).encode())
max_params = st.integers(1, 20)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300), max_params)
def test_form_any_bytes(body: bytes, limit: int):
    same_form(body, limit)


@settings(max_examples=1500, deadline=None)
@given(form_bodies, max_params)
def test_form_near_valid_bodies(body: bytes, limit: int):
    same_form(body, limit)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=40), min_size=1, max_size=18),
       max_params, st.booleans())
def test_form_encoded_forms_and_repeats(fields: dict[str, str], limit: int, repeat: bool):
    from urllib.parse import quote_plus

    pairs = list(fields.items()) + ([next(iter(fields.items()))] if repeat else [])
    same_form("&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs).encode("ascii"), limit)


def test_form_other_argument_types():
    for body in (b"", bytearray(b"a=1&b=%41"), memoryview(b"a=1"), bytearray(b"a=\n"), "a=1", "", None, 7):
        same_form(body, 16)
    same_form(b"a=1&b=2", True)


# --- compact JWS --------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


JSON_TEXTS = [
    '{"alg":"RS256","kid":"k1","typ":"JWT"}', '{"a":1,"a":2}', '{"a":{"b":1,"b":1}}', '{"a":NaN}', '{"a":Infinity}',
    '{"a":-Infinity}', '{"a":1e999}', '{"a":-0.0}', '{"a":1.0,"b":1,"c":true}', '[1,2]', '"text"', "null", "1",
    " {} ", "{}\n", "\ufeff{}", "{", "{}}", '{"a":"\\ud800"}', '{"a":"\\ud83d\\ude00"}', '{"a":"\x01"}',
    '{"a":"\\u00e9"}', '{"\\u0000":0}', '{"a":' + "9" * 5000 + "}", "[" * 600 + "]" * 600,
    '{"a":' + "[" * 300 + "]" * 300 + "}", '{"a":[{"b":{"c":[],"c":0}}]}', "{} x", '{"a":1,}', "{'a':1}",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=10)
    | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


@st.composite
def json_bytes(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.sampled_from(JSON_TEXTS)).encode("utf-8", "surrogatepass")
    if choice == 1:
        return json.dumps(draw(json_values)).encode()
    if choice == 2:  # a valid object with a duplicated member spliced in
        text = json.dumps(draw(st.dictionaries(st.text(max_size=4), json_values, min_size=1, max_size=4)))
        return (text[:-1] + ", " + text[1:]).encode()
    return draw(st.binary(max_size=40))  # not UTF-8, not JSON


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def unused_bits_set(draw: st.DrawFn, text: str) -> str:
    # RFC 4648 §3.5: the same bytes, spelled with some of the last character's unused low bits set.
    mask = {2: 0x0F, 3: 0x03}.get(len(text) % 4)
    if not mask:
        return text
    return text[:-1] + ALPHABET[ALPHABET.index(text[-1]) | draw(st.integers(1, mask))]


@st.composite
def segments(draw: st.DrawFn) -> str:
    text = b64(draw(json_bytes()))
    mutation = draw(st.integers(0, 7))
    if mutation == 1 and text:
        text = unused_bits_set(draw, text)
    elif mutation == 5 and text:  # another last character
        text = text[:-1] + draw(st.sampled_from("ABQRgh-_9"))
    elif mutation == 2:  # length = 1 mod 4
        text += draw(st.sampled_from("AQw"))
    elif mutation == 3:  # padding, whitespace, a foreign character
        text += draw(st.sampled_from(["=", "==", " ", "\n", "+", "/", "é", "\x00"]))
    elif mutation == 4:
        text = ""
    return text


@st.composite
def tokens(draw: st.DrawFn) -> str:
    signature = b64(draw(st.binary(max_size=70)))
    if draw(st.booleans()):
        signature = unused_bits_set(draw, signature)
    parts = [draw(segments()), draw(segments()), signature]
    if draw(st.integers(0, 5)) == 0:  # two or four segments, a stray dot
        parts = draw(st.sampled_from([parts[:2], [*parts, parts[2]], [parts[0], "", *parts[1:]]]))
    return ".".join(parts)


caps = st.tuples(st.sampled_from([0, 1, 8, 40, 64, 1024]), st.sampled_from([0, 1, 8, 40, 128, 2048, 10000]))


@settings(max_examples=3000, deadline=None)
@given(tokens(), caps)
def test_jws_near_valid_tokens(token: str, limits: tuple[int, int]):
    same_jws(token, *limits)


@settings(max_examples=1500, deadline=None)
@given(st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9_=.\n -]{0,200}", fullmatch=True), caps)
def test_jws_any_text(token: str, limits: tuple[int, int]):
    same_jws(token, *limits)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6), st.binary(min_size=1, max_size=300))
def test_jws_canonical_tokens(payload: dict[str, Any], signature: bytes):
    token = ".".join((b64(b'{"alg":"ES256"}'), b64(json.dumps(payload).encode()), b64(signature)))
    same_jws(token, 1024, 2048)


def test_jws_other_argument_types_and_caps():
    token = f"{b64(b'{}')}.{b64(b'{}')}.{b64(b'sig')}"
    for value in (token.encode(), None, 5, type("S", (str,), {})(token)):
        same_jws(value, 1024, 2048)
    for header_cap, payload_cap in ((-1, 2048), (1024, -5), (2**80, 2**80), (True, 2048), (1024.0, 2048)):
        same_jws(token, header_cap, payload_cap)
