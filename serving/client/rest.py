"""REST transport: ``POST /predictions/colorizer`` through a pooled ``requests`` session.

The photo goes as the raw body, or, when options are given, as multipart field ``data``
beside fields ``format`` / ``quality`` (TorchServe 0.12 drops query strings on
``/predictions/``).
"""

from __future__ import annotations

import email.utils
import time

import requests

from serving.client.base import (
    WORKER_DIED,
    Colorized,
    ServiceError,
    error_from_body,
    sniff_content_type,
)
from serving.runtime.constants import REQUEST_ID_HEADER, SERVER_REQUEST_ID_HEADER

# Statuses worth the same call again (serving/client/retry.py): TorchServe answers 503 when
# the model's queue is full and 507 when the worker serving the request died (it restarts);
# a worker death can also come as 500 "Worker died." (see WORKER_DIED), retried as well.
RETRY_STATUSES = frozenset({503, 507})


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RestTransport:
    """One REST endpoint (``http://host:8080``); thread-safe."""

    def __init__(self, url: str, *, model_name: str, timeout: float, pool_size: int) -> None:
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.timeout = timeout  # for ping; colorize gets each try's share of the deadline
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def colorize(
        self, image: bytes, options: dict[str, str], timeout: float, meta: dict[str, str]
    ) -> Colorized:
        """One try within ``timeout`` seconds, ``meta`` (request id, deadline, trace) as
        headers; ServiceError says whether to try again."""
        endpoint = f"{self.url}/predictions/{self.model_name}"
        try:
            if options:
                files = {"data": ("image", image, "application/octet-stream")}
                resp = self._session.post(
                    endpoint, files=files, data=options, headers=meta, timeout=timeout
                )
            else:
                headers = {**meta, "Content-Type": "application/octet-stream"}
                resp = self._session.post(endpoint, data=image, headers=headers, timeout=timeout)
        except requests.Timeout as exc:  # the deadline is spent: nothing left to retry in
            raise ServiceError(504, "timeout", f"{endpoint}: {exc}") from exc
        except requests.RequestException as exc:  # refused or reset: a restart, a new pod
            raise ServiceError(503, "unavailable", f"{endpoint}: {exc}", retryable=True) from exc
        if resp.status_code != 200:
            error = error_from_body(
                resp.status_code,
                resp.content,
                retry_after=retry_after_s(resp.headers.get("Retry-After")),
            )
            error.retryable = resp.status_code in RETRY_STATUSES or error.message == WORKER_DIED
            # TorchServe's own id: behind the front under its own name, else X-Request-Id.
            error.server_id = resp.headers.get(SERVER_REQUEST_ID_HEADER) or resp.headers.get(
                REQUEST_ID_HEADER
            )
            raise error
        content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return Colorized(resp.content, content_type or sniff_content_type(resp.content))

    def ping(self) -> bool:
        try:
            resp = self._session.get(f"{self.url}/ping", timeout=self.timeout)
            return resp.status_code == 200 and resp.json().get("status") == "Healthy"
        except (requests.RequestException, ValueError):
            return False

    def close(self) -> None:
        self._session.close()
