"""fileserver/paths.py: request targets routed, path tricks refused."""

from __future__ import annotations

import pytest

from fileserver import paths


@pytest.mark.parametrize("target,kind", [
    (b"/p/AAAAAAAAAAAAAAAAAAAAAA/cfg000b82f55284.xml", "device"),
    (b"/p/AAAAAAAAAAAAAAAAAAAAAA/cfg000b82f55284.xml?x=1", "device"),
    (b"/cfg000b82f55284.xml", "plain"),
    (b"/healthz", "health"), (b"/metrics", "metrics"),
    (b"/", "none"), (b"/p/", "none"), (b"/p/AAAAAAAAAAAAAAAAAAAAAA/", "none"), (b"/p/short/cfg.xml", "none"),
])
def test_routes(target, kind):
    assert paths.route(target).kind == kind


@pytest.mark.parametrize("target", [b"/p/../etc/passwd", b"/a%2fb", b"/a%2Fb", b"/%2e%2e/x", b"/a\\b", b"//x",
                                    b"/x/./y", b"/" + b"a" * 2000, b"/a\x00", b"/\xff", b"*", b"http://h/x"])
def test_path_tricks_are_refused(target):
    with pytest.raises(paths.BadPath):
        paths.route(target)


def test_routes_under_a_public_url_prefix():
    assert paths.route(b"/pnp/p/AAAAAAAAAAAAAAAAAAAAAA/f.xml", "/pnp/").kind == "device"
    assert paths.route(b"/p/AAAAAAAAAAAAAAAAAAAAAA/f.xml", "/pnp/").kind == "none"
