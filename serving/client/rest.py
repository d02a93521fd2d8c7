"""REST transport: ``POST /predictions/colorizer`` through a pooled ``requests`` session.

The photo goes as the raw body, or, when options are given, as multipart field ``data``
beside fields ``format`` / ``quality`` (TorchServe 0.12 drops query strings on
``/predictions/``).
"""

from __future__ import annotations

import requests

from serving.client.base import Colorized, ServiceError, error_from_body, sniff_content_type


class RestTransport:
    """One REST endpoint (``http://host:8080``); thread-safe."""

    def __init__(self, url: str, *, model_name: str, timeout: float, pool_size: int) -> None:
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.timeout = timeout
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def colorize(self, image: bytes, options: dict[str, str]) -> Colorized:
        endpoint = f"{self.url}/predictions/{self.model_name}"
        try:
            if options:
                files = {"data": ("image", image, "application/octet-stream")}
                resp = self._session.post(endpoint, files=files, data=options, timeout=self.timeout)
            else:
                headers = {"Content-Type": "application/octet-stream"}
                resp = self._session.post(
                    endpoint, data=image, headers=headers, timeout=self.timeout
                )
        except requests.RequestException as exc:
            raise ServiceError(503, "unavailable", f"{endpoint}: {exc}") from exc
        if resp.status_code != 200:
            raise error_from_body(resp.status_code, resp.content)
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
