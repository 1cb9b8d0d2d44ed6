"""Property tests of the strict form parser (stage form): what it accepts, it reads back exactly;
whatever bytes arrive, the answer is a dict or a FormError, never another exception."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import Reason
from gateway.server.form import FormError, parse_form

MAX = 16
names = st.text(min_size=1, max_size=20)
values = st.text(max_size=60)


def encode(pairs: list[tuple[str, str]]) -> bytes:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs).encode("ascii")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, values, min_size=1, max_size=MAX))
def test_encoded_forms_read_back_exactly(form: dict[str, str]):
    assert parse_form(encode(list(form.items())), max_params=MAX) == form


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_form_or_a_form_error(body: bytes):
    try:
        form = parse_form(body, max_params=MAX)
    except FormError as exc:
        assert exc.reason in (Reason.FORM_MALFORMED, Reason.TOO_MANY_PARAMETERS, Reason.REPEATED_PARAMETER)
    else:
        assert isinstance(form, dict) and len(form) <= MAX
        # Whatever was accepted was printable ASCII, no space: nothing to smuggle past later checks.
        assert all(33 <= byte <= 126 for byte in body)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, values, min_size=1, max_size=MAX - 1), st.data())
def test_a_repeated_parameter_is_refused(form: dict[str, str], data: st.DataObject):
    pairs = list(form.items())
    name = data.draw(st.sampled_from(sorted(form)))
    pairs.insert(data.draw(st.integers(0, len(pairs))), (name, data.draw(values)))
    try:
        parse_form(encode(pairs), max_params=MAX)
    except FormError as exc:
        assert exc.reason is Reason.REPEATED_PARAMETER
    else:
        raise AssertionError("repeated parameter accepted")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, values, min_size=1, max_size=MAX),
       st.sampled_from([b"\n", b"\r\n", b" ", b"\t", b"\x00", b"\x7f", b"\xc3\xa9"]))
def test_a_raw_byte_outside_printable_ascii_is_refused(form: dict[str, str], tail: bytes):
    try:
        parse_form(encode(list(form.items())) + tail, max_params=MAX)
    except FormError as exc:
        assert exc.reason is Reason.FORM_MALFORMED
    else:
        raise AssertionError(f"accepted a body ending in {tail!r}")
