"""fileserver/settings.py: settings that only work together."""

from __future__ import annotations

import pytest

from fileserver.settings import SETTINGS, check
from services import settings as s


def test_settings_that_only_work_together():
    base = {"tls_cert": "/c.pem"}
    with pytest.raises(s.SettingError, match="PNP_TLS_KEY"):
        check(s.resolve(SETTINGS, base, environ={}))
    with pytest.raises(s.SettingError, match="PNP_HTTP_USER"):
        check(s.resolve(SETTINGS, {"http_auth": "digest"}, environ={}))
    with pytest.raises(s.SettingError, match="PNP_FILE_SECRET"):
        s.resolve(SETTINGS, {"file_secret": "short"}, environ={})
    with pytest.raises(s.SettingError, match="PNP_HTTP_AUTH"):
        s.resolve(SETTINGS, {"http_auth": "ntlm"}, environ={})
    check(s.resolve(SETTINGS, {}, environ={}))


def test_the_listen_backlog_comes_from_its_setting():
    # Twisted's default of 50 overflowed in boot storms (the kernel dropped the phones' SYNs)
    from twisted.internet.testing import MemoryReactor
    from twisted.web import server

    from fileserver.tls import listen

    assert s.resolve(SETTINGS, {}, environ={}).http_backlog == 4096
    cfg = s.resolve(SETTINGS, {}, environ={"PNP_HTTP_BACKLOG": "1000"})
    with pytest.raises(s.SettingError, match="PNP_HTTP_BACKLOG"):
        s.resolve(SETTINGS, {}, environ={"PNP_HTTP_BACKLOG": "0"})
    reactor = MemoryReactor()
    listen(reactor, server.Site(None), 8080, "127.0.0.1", backlog=cfg.http_backlog)
    assert reactor.tcpServers[0][2] == 1000
