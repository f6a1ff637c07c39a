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
