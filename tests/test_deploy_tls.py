"""The broker's TLS listener as docs/DEPLOY.md sets it up: conf.d/tls.conf.example with a
certificate from `pnp tls-cert`, and a service on mqtts:// that trusts it through SSL_CERT_FILE."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tools import brokersetup
from tests.test_deploy_broker import PNP, LockedBroker



def test_a_service_logs_in_over_tls_and_only_with_the_certificate_trusted(tmp_path):
    cert, key = tmp_path / "certs" / "server.crt", tmp_path / "certs" / "server.key"
    made = subprocess.run([*PNP, "tls-cert", "--host", "mosquitto", "--host", "127.0.0.1",
                           "--cert", str(cert), "--key", str(key)], capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    passwords = {"generator": brokersetup.new_secret()}
    broker = LockedBroker(tmp_path / "broker", passwords, tls=(cert, key)).start()
    env = {"PATH": os.environ.get("PATH", ""), "PNP_LOG_FORMAT": "text", "PNP_STATUS_INTERVAL": "1",
           "PNP_INSTANCE": "tls", "PNP_DATA_DIR": str(tmp_path / "data"),
           "PNP_MQTT_URL": f"mqtts://generator:{passwords['generator']}@127.0.0.1:{broker.tls_port}"}
    trusted = {**env, "SSL_CERT_FILE": str(cert)}
    log = (tmp_path / "generator.log").open("wb")
    service = subprocess.Popen([*PNP, "generator"], env=trusted, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            ok = subprocess.run([*PNP, "health", "generator", "--timeout", "2"], env=trusted,
                                capture_output=True, text=True, timeout=20)
            if ok.returncode == 0:
                break
            assert service.poll() is None and time.monotonic() < deadline, \
                ok.stderr + (tmp_path / "generator.log").read_text()
            time.sleep(0.2)
        # the same login without the certificate trusted is refused by the client itself
        untrusted = subprocess.run([*PNP, "health", "generator", "--timeout", "2"], env=env,
                                   capture_output=True, text=True, timeout=20)
        assert untrusted.returncode == 1
        assert "certificate" in untrusted.stderr.lower()
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        broker.stop()
