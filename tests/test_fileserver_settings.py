"""fileserver/settings.py: settings that only work together."""

from __future__ import annotations

import pytest

from fileserver.settings import ALL, check
from services import settings as s


def test_settings_that_only_work_together():
    base = {"tls_cert": "/c.pem"}
    with pytest.raises(s.SettingError, match="PNP_TLS_KEY"):
        check(s.resolve(ALL, base, environ={}))
    with pytest.raises(s.SettingError, match="PNP_HTTP_USER"):
        check(s.resolve(ALL, {"http_auth": "digest"}, environ={}))
    with pytest.raises(s.SettingError, match="PNP_FILE_SECRET"):
        s.resolve(ALL, {"file_secret": "short"}, environ={})
    with pytest.raises(s.SettingError, match="PNP_HTTP_AUTH"):
        s.resolve(ALL, {"http_auth": "ntlm"}, environ={})
    check(s.resolve(ALL, {}, environ={}))
