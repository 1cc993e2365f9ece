"""Where to connect and how to authenticate, per provider (pure: strings in, an Endpoint out).

- openai: ``wss://api.openai.com/v1/realtime?model=MODEL``, ``Authorization: Bearer KEY``; the beta
  dialect adds ``OpenAI-Beta: realtime=v1``.
- azure: the resource URL (``https://NAME.openai.azure.com``) and a deployment name, header ``api-key``.
  GA uses the v1 API, ``/openai/v1/realtime?model=DEPLOYMENT``, which has no dated version; beta the
  preview path ``/openai/realtime?api-version=VERSION&deployment=DEPLOYMENT`` (``realtime.api_version``).
- local: the URL of a local backend as given (``ws://127.0.0.1:PORT/v1/realtime``); with an api_key,
  ``Authorization: Bearer KEY`` (the token of a ``sipagent local-realtime --token`` backend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit, urlunsplit

from sipagent.errors import RealtimeError
from sipagent.realtime.events import Dialect, check_dialect

OPENAI_URL = "wss://api.openai.com/v1/realtime"
AZURE_BETA_API_VERSION = "2025-04-01-preview"
_SECRET_HEADERS = {"authorization", "api-key"}


@dataclass(frozen=True)
class Endpoint:
    """A WebSocket URL plus handshake headers. ``repr`` never shows the headers (they hold the key)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    dialect: Dialect = "ga"

    def redacted_headers(self) -> dict[str, str]:
        return {k: ("***" if k.lower() in _SECRET_HEADERS else v) for k, v in self.headers.items()}


def _ws_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise RealtimeError(f"realtime url {url!r} is not a ws://, wss://, http:// or https:// URL")
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def openai_endpoint(api_key: str, model: str, dialect: str = "ga", url: str = "") -> Endpoint:
    d = check_dialect(dialect)
    if not api_key:
        raise RealtimeError("realtime.api_key is empty (set OPENAI_API_KEY)")
    headers = {"Authorization": f"Bearer {api_key}"}
    if d == "beta":
        headers["OpenAI-Beta"] = "realtime=v1"
    return Endpoint(_with_query(_ws_url(url or OPENAI_URL), model=model), headers, d)


def azure_endpoint(
    resource_url: str,
    deployment: str,
    api_key: str,
    dialect: str = "ga",
    api_version: str = AZURE_BETA_API_VERSION,
) -> Endpoint:
    d = check_dialect(dialect)
    if not resource_url or not deployment or not api_key:
        raise RealtimeError(
            "azure needs realtime.url (resource URL), realtime.model (deployment) and api_key"
        )
    parts = urlsplit(_ws_url(resource_url))
    base = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    if d == "ga":
        url = _with_query(base + "/openai/v1/realtime", model=deployment)
    else:
        url = _with_query(base + "/openai/realtime", **{"api-version": api_version, "deployment": deployment})
    return Endpoint(url, {"api-key": api_key}, d)


def local_endpoint(url: str, dialect: str = "ga", model: str = "", api_key: str = "") -> Endpoint:
    d = check_dialect(dialect)
    ws = _ws_url(url)
    if model and "model=" not in ws:
        ws = _with_query(ws, model=model)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if d == "beta":
        headers["OpenAI-Beta"] = "realtime=v1"
    return Endpoint(ws, headers, d)


def endpoint_for(
    provider: str, *, url: str = "", model: str = "", api_key: str = "", dialect: str = "ga",
    api_version: str = AZURE_BETA_API_VERSION,
) -> Endpoint:
    """The endpoint for the ``realtime`` config section (provider openai | azure | local); ``api_version`` is
    Azure's, for its preview (beta) endpoint."""
    if provider == "openai":
        return openai_endpoint(api_key, model, dialect, url)
    if provider == "azure":
        return azure_endpoint(url, model, api_key, dialect, api_version or AZURE_BETA_API_VERSION)
    if provider == "local":
        if not url:
            raise RealtimeError("provider local needs a url here (start the in-process backend first)")
        return local_endpoint(url, dialect, model, api_key)
    raise RealtimeError(f"realtime.provider {provider!r} is not one of openai, azure, local")
