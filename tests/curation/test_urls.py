import pytest

from curation.urls import canonicalize_url


@pytest.mark.parametrize("a,b", [
    ("HTTP://Example.COM/a", "https://example.com/a"),                   # scheme + host case
    ("http://example.com:80/a", "https://example.com/a"),                # default http port
    ("https://example.com:443/a", "https://example.com/a"),              # default https port
    ("https://example.com/a/", "https://example.com/a"),                 # trailing slash
    ("https://example.com/a#section-2", "https://example.com/a"),        # fragment
    ("https://example.com/a?utm_source=x&utm_medium=y", "https://example.com/a"),
    ("https://example.com/a?fbclid=123&id=7", "https://example.com/a?id=7"),
    ("https://example.com/a?gclid=1&b=2&a=1", "https://example.com/a?a=1&b=2"),  # order
    ("https://example.com", "https://example.com/"),                     # empty path
    ("https://example.com/x/./y/../z", "https://example.com/x/z"),       # dot segments
    ("https://example.com/%7Euser", "https://example.com/~user"),        # unreserved escapes
    ("https://example.com.:443/", "https://example.com/"),               # trailing dot in host
])
def test_same_page(a, b):
    assert canonicalize_url(a) == canonicalize_url(b)


@pytest.mark.parametrize("a,b", [
    ("https://example.com:8080/a", "https://example.com/a"),  # a non-default port is another server
    ("https://example.com/a?id=1", "https://example.com/a?id=2"),
    ("https://example.com/a?id=", "https://example.com/a"),   # a blank value is still a value
    ("https://www.example.com/a", "https://example.com/a"),   # www kept unless asked
    ("https://example.com/A", "https://example.com/a"),       # paths are case-sensitive
])
def test_different_pages(a, b):
    assert canonicalize_url(a) != canonicalize_url(b)


def test_strip_www_option():
    assert canonicalize_url("https://www.example.com/a", strip_www=True) == "https://example.com/a"


@pytest.mark.parametrize("url", [None, "", "   "])
def test_missing(url):
    assert canonicalize_url(url) is None


@pytest.mark.parametrize("url", ["mailto:a@b.c", "not a url", "ftp://host/file", "http://[::1:bad/"])
def test_non_http_only_equals_itself(url):
    assert canonicalize_url(url) == url.strip()
