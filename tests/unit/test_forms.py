"""Multipart bodies the front passes on unread, as the handler reads them
(serving/runtime/forms.py): the fields requests and curl send, a part limit that stops a
flood early, and clear refusals."""

from __future__ import annotations

import time

import pytest
import requests

from serving.runtime.constants import FORM_CONTENT_TYPE, MAX_FORM_PARTS
from serving.runtime.errors import InvalidOption, TooManyInputs
from serving.runtime.forms import is_form, parse_form


def encoded(files: dict, data: dict) -> tuple[bytes, str]:
    """A multipart body as `requests` (ColorizerClient) sends it, under the front's name."""
    prepared = requests.Request("POST", "http://x/", files=files, data=data).prepare()
    content_type = prepared.headers["Content-Type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    return prepared.body, content_type.replace("multipart/form-data", FORM_CONTENT_TYPE)


def test_the_clients_fields_come_back_exactly():
    photo = bytes(range(256)) * 4000 + b"\r\n--not-the-boundary\r\n"
    body, content_type = encoded(
        {"data": ("image", photo, "application/octet-stream")}, {"format": "png", "quality": "80"}
    )
    assert is_form(content_type) and not is_form("multipart/form-data; boundary=x")
    assert parse_form(body, content_type) == {"data": photo, "format": b"png", "quality": b"80"}


def test_a_flood_of_parts_is_refused_without_reading_it_all():
    boundary = "b"
    part = b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n"
    flood = part * 1_700_000 + b"--b--\r\n"  # ~80 MB, the attack of issue #36
    started = time.perf_counter()
    with pytest.raises(TooManyInputs, match=f"more than {MAX_FORM_PARTS} parts"):
        parse_form(flood, f"{FORM_CONTENT_TYPE}; boundary={boundary}")
    assert time.perf_counter() - started < 5  # stops at the limit (a full parse: minutes)


@pytest.mark.parametrize(
    "body, content_type, match",
    [
        (b"--b\r\n", f"{FORM_CONTENT_TYPE}", "needs the boundary"),
        (
            b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx",
            f"{FORM_CONTENT_TYPE}; boundary=b",
            "malformed",
        ),
        (b"no delimiter at all", f"{FORM_CONTENT_TYPE}; boundary=b", "malformed"),
    ],
)
def test_malformed_bodies_are_refused_as_such(body, content_type, match):
    with pytest.raises(InvalidOption, match=match):
        parse_form(body, content_type)
