"""URL canonicalisation: two URLs that name the same page map to one string.

Rules (each is a way crawls repeat a page under another URL):
- scheme and host are case-insensitive: lower-cased; `http` and `https` are treated as one
  page (crawls fetch both) and written as `https`; a leading `www.` is kept (it can be a
  different site) unless `strip_www` is set;
- default ports (`:80` for http, `:443` for https) are dropped;
- the fragment (`#...`) never reaches the server: dropped;
- tracking parameters (`utm_*`, `fbclid`, `gclid`, ...) are dropped; the rest are sorted, so
  `?b=2&a=1` == `?a=1&b=2` (blank values kept: `?a=` differs from no `a`);
- an empty path is `/`; a trailing slash on a non-root path is dropped; dot segments resolved;
- percent-encoding is normalised (unreserved characters decoded, escapes upper-cased).
Anything that is not an absolute http(s) URL is returned stripped but otherwise unchanged, so
it only matches itself.
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

TRACKING_PARAMS = frozenset({
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "mc_cid", "mc_eid",
    "igshid", "_ga", "_gl", "_hsenc", "_hsmi", "mkt_tok", "ref_src", "spm",
})
TRACKING_PREFIXES = ("utm_", "pk_", "hsa_")
DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 3986 unreserved characters stay decoded; everything else is percent-encoded.
_SAFE_PATH = "/:@!$&'()*+,;=-._~"
_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")


def _is_tracking(key: str) -> bool:
    k = key.lower()
    return k in TRACKING_PARAMS or k.startswith(TRACKING_PREFIXES)


def _normalise_path(path: str) -> str:
    path = quote(unquote(path), safe=_SAFE_PATH)
    if not path or path == "/":
        return "/"
    # NOTE: normpath also drops a trailing slash: `/a/` and `/a` are one page on most servers.
    resolved = posixpath.normpath(path)
    if resolved.startswith("//"):  # normpath keeps a leading '//' (POSIX); a URL path does not
        resolved = "/" + resolved.lstrip("/")
    if resolved in (".", ""):
        return "/"
    return resolved


def canonicalize_url(url: str | None, *, strip_www: bool = False) -> str | None:
    """The canonical form of `url` (None for None/blank)."""
    if url is None:
        return None
    url = url.strip()
    if not url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # malformed netloc/port: it only equals itself
        return url
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return url
    host = parts.hostname.lower().rstrip(".")
    if strip_www and host.startswith("www."):
        host = host[4:]
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc = f"{host}:{port}"
    if parts.username:
        userinfo = parts.username + (f":{parts.password}" if parts.password else "")
        netloc = f"{userinfo}@{netloc}"
    query_pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _is_tracking(k)]
    query = urlencode(sorted(query_pairs), doseq=True)
    return urlunsplit(("https", netloc, _normalise_path(parts.path), query, ""))
