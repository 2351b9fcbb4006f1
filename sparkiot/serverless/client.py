"""A small client of the control plane's HTTP API, used by ``sparkiot submit/list/status/stop/cost``."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import httpx

from sparkiot.serverless.settings import TOKEN_VARIABLE

URL_VARIABLE = "SPARKIOT_URL"
DEFAULT_URL = "http://127.0.0.1:8765"


class ClientError(RuntimeError):
    """A request that the control plane rejected or never received; the message names the next step."""


def find_token(token: str | None, state_dir: str) -> str | None:
    """Return the token given, else ``$SPARKIOT_TOKEN``, else the one ``sparkiot serve`` generated in ``state_dir``."""
    if token:
        return token
    if os.environ.get(TOKEN_VARIABLE):
        return os.environ[TOKEN_VARIABLE]
    path = Path(state_dir) / "token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get(URL_VARIABLE) or DEFAULT_URL).rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs):
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the control plane at {self.url} ({exc}); start it with 'sparkiot serve' "
                              f"or point --url (or ${URL_VARIABLE}) at it") from None
        if response.status_code == 401:
            raise ClientError(f"the control plane rejected the token ({response.json().get('detail')}); pass --token, "
                              f"set ${TOKEN_VARIABLE}, or run from the folder holding sparkiot-serve/token")
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:500]
            if isinstance(detail, list):
                detail = "; ".join(f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}" for item in detail)
            raise ClientError(f"{method} {path} failed ({response.status_code}): {detail}")
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def submit(self, yaml_text: str) -> dict:
        return self.request("POST", "/pipelines", json={"yaml": yaml_text})

    def list(self) -> list[dict]:
        return self.request("GET", "/pipelines")

    def status(self, name: str) -> dict:
        return self.request("GET", f"/pipelines/{_segment(name)}")

    def stop(self, name: str) -> dict:
        return self.request("POST", f"/pipelines/{_segment(name)}/stop")

    def start(self, name: str) -> dict:
        return self.request("POST", f"/pipelines/{_segment(name)}/start")

    def delete(self, name: str) -> None:
        return self.request("DELETE", f"/pipelines/{_segment(name)}")

    def logs(self, name: str, source: str = "events", lines: int = 100) -> dict:
        return self.request("GET", f"/pipelines/{_segment(name)}/logs", params={"source": source, "lines": lines})

    def cost(self, name: str, platform: str) -> dict:
        return self.request("GET", f"/pipelines/{_segment(name)}/cost", params={"platform": platform})

    def scale(self, name: str, executors: int | None = None, trigger: float | None = None, *, automatic: bool = False) -> dict:
        return self.request("PUT", f"/pipelines/{_segment(name)}/scaling",
                            json={"executors": executors, "trigger": trigger, "automatic": automatic})


def _segment(name: str) -> str:
    """Quote a pipeline name for a URL path, so that '#', '?' or '/' cannot change the request."""
    return quote(name, safe="")
