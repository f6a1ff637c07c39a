"""fileserver/tls.py: TLS files that do not fit say why."""

from __future__ import annotations

import pytest

from tools.certs import make_pair
from fileserver.tls import TlsError, context_factory


def test_tls_files_that_do_not_fit_say_why(tmp_path):
    cert, key = make_pair(["127.0.0.1"])
    _, other_key = make_pair(["127.0.0.1"])
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    (tmp_path / "o.pem").write_bytes(other_key)
    context_factory(tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(TlsError, match="not the key"):
        context_factory(tmp_path / "c.pem", tmp_path / "o.pem")
    with pytest.raises(TlsError, match="cannot read"):
        context_factory(tmp_path / "missing.pem", tmp_path / "k.pem")
    with pytest.raises(TlsError, match="no PEM certificate"):
        context_factory(tmp_path / "k.pem", tmp_path / "k.pem")
