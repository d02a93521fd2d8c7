"""multipart/form-data bodies, read here instead of by TorchServe's frontend.

TorchServe 0.12 decodes every multipart body with netty 4.1.53's HttpPostRequestDecoder,
which has no limit on the number of parts (CVE-2024-29025): 1.7 M empty parts in 85 MB
took 2.7 GB of heap and 20 s. The front (serving/front/nginx.conf) therefore renames a
multipart body's Content-Type to ``FORM_CONTENT_TYPE`` (boundary kept), so TorchServe
passes it on as a raw body, and the handler reads it with ``parse_form``: the
``multipart`` package's parser, which stops at ``MAX_FORM_PARTS``.
"""

from __future__ import annotations

import multipart

from serving.runtime.constants import FORM_CONTENT_TYPE, MAX_FORM_PARTS
from serving.runtime.errors import InvalidOption, TooManyInputs

CHUNK_BYTES = 1 << 20  # fed to the parser a slice at a time: it stops at the limit early


def is_form(content_type: str | None) -> bool:
    """Whether ``content_type`` is the front's renamed multipart/form-data."""
    return content_type is not None and content_type.split(";")[0].strip().lower() == (
        FORM_CONTENT_TYPE
    )


def parse_form(body: bytes, content_type: str, max_parts: int = MAX_FORM_PARTS) -> dict[str, bytes]:
    """The fields of a multipart/form-data ``body`` as {name: bytes} (the first of a name).

    Raises TooManyInputs past ``max_parts`` parts (found without reading further), and
    InvalidOption when the body is not multipart/form-data with ``content_type``'s boundary.
    """
    _, options = multipart.parse_options_header(content_type)
    boundary = options.get("boundary")
    if not boundary:
        raise InvalidOption("a multipart/form-data body needs the boundary of its Content-Type")
    fields: dict[str, bytes] = {}
    name, chunks = None, []
    try:
        with multipart.PushMultipartParser(
            boundary, content_length=len(body), max_segment_count=max_parts
        ) as parser:
            for start in range(0, len(body) or 1, CHUNK_BYTES):
                for event in parser.parse(body[start : start + CHUNK_BYTES]):
                    if isinstance(event, multipart.MultipartSegment):
                        name, chunks = event.name, []
                    elif event is not None:
                        chunks.append(bytes(event))
                    elif name is not None:
                        fields.setdefault(name, b"".join(chunks))
    except multipart.ParserLimitReached as exc:
        raise TooManyInputs(
            f"the multipart body has more than {max_parts} parts ({exc}); send the fields "
            "data, format and quality (serving/API.md)"
        ) from None
    except multipart.MultipartError as exc:
        raise InvalidOption(f"the multipart/form-data body is malformed: {exc}") from None
    return fields
