"""Settings: flags over environment over defaults; each bad value stops with one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services import settings as s


def resolve(flags=None, env=None):
    return s.resolve(s.COMMON + s.CONTRACT, flags or {}, environ=env or {})


def test_defaults_are_the_contracts():
    got = resolve()
    assert str(got.mqtt_url) == "mqtt://127.0.0.1:1883"
    assert got.topic_prefix == "pnp"
    assert got.sip_interface == ("127.0.0.1",)
    assert got.sip_port == 5060
    assert got.http_port == 8080
    assert got.public_url == "http://127.0.0.1:8080/"
    assert str(got.data_dir) == "var"


def test_flag_wins_over_environment():
    got = resolve({"http_port": "9000"}, {"PNP_HTTP_PORT": "9001", "PNP_SIP_PORT": "5070"})
    assert got.http_port == 9000
    assert got.sip_port == 5070
    assert got.public_url == "http://127.0.0.1:9000/"


def test_mqtt_url_with_credentials_never_prints_the_password():
    got = resolve(env={"PNP_MQTT_URL": "mqtts://svc:p%40ss@broker.lan:8883"})
    url = got.mqtt_url
    assert (url.scheme, url.host, url.port, url.username, url.password) == (
        "mqtts", "broker.lan", 8883, "svc", "p@ss")
    assert url.tls
    assert "p@ss" not in str(url)


@pytest.mark.parametrize("env,value", [
    ("PNP_MQTT_URL", "http://broker:1883"),
    ("PNP_MQTT_URL", "mqtt://broker:99999"),
    ("PNP_MQTT_URL", "mqtt://"),
    ("PNP_TOPIC_PREFIX", "pnp/#"),
    ("PNP_TOPIC_PREFIX", "/pnp"),
    ("PNP_SIP_INTERFACE", "eth-does-not-exist"),
    ("PNP_SIP_INTERFACE", "::1"),
    ("PNP_SIP_PORT", "0"),
    ("PNP_SIP_PORT", "five"),
    ("PNP_HTTP_PORT", "65536"),
    ("PNP_PUBLIC_URL", "ftp://x/"),
    ("PNP_INSTANCE", "has space"),
    ("PNP_LOG_FORMAT", "xml"),
    ("PNP_STATUS_INTERVAL", "-1"),
])
def test_bad_value_names_setting_value_and_what_is_allowed(env, value):
    with pytest.raises(s.SettingError) as info:
        resolve(env={env: value})
    message = str(info.value)
    assert "\n" not in message
    assert env in message and repr(value) in message and "allowed" in message


def test_interface_names_are_accepted_and_all_is_special():
    assert resolve(env={"PNP_SIP_INTERFACE": "lo"}).sip_interface == ("lo",)
    assert resolve(env={"PNP_SIP_INTERFACE": "all"}).sip_interface == ("all",)
    assert resolve(env={"PNP_SIP_INTERFACE": "127.0.0.1, lo"}).sip_interface == ("127.0.0.1", "lo")


@pytest.mark.parametrize("command", ["listener", "generator", "fileserver", "notifier", "up"])
def test_command_exits_2_with_one_line_on_a_bad_setting(command, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PNP_TOPIC_PREFIX": "bad/#/prefix", "PNP_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "tools.cli", command], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "PNP_TOPIC_PREFIX" in lines[0] and "bad/#/prefix" in lines[0]
    assert "Traceback" not in done.stderr


def test_every_command_has_help():
    for command in ["listener", "generator", "fileserver", "notifier", "up"]:
        done = subprocess.run([sys.executable, "-m", "tools.cli", command, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0
        assert "PNP_MQTT_URL" in done.stdout


def test_whole_number_settings_take_plain_digits_within_their_range():
    from fileserver.settings import NOT_FOUND_LIMIT
    from listener.settings import PUBLISH_WINDOW
    from notifier.settings import NOTIFY_PORT

    cases = [(s.SIP_PORT, "1", "65535", ["0", "65536"]),
             (NOTIFY_PORT, "0", "65535", ["65536", "-1"]),
             (PUBLISH_WINDOW, "1", "10000", ["0", "10001", "+16", "1_6"]),
             (NOT_FOUND_LIMIT, "1", "999999999", ["0", "1000000000", "ten"])]
    for setting, low, high, bad in cases:
        for good in (low, high, f" {high} "):
            value = s.resolve([setting], {setting.name: good}, environ={})
            assert getattr(value, setting.name) == int(good)
        for text in bad:
            with pytest.raises(s.SettingError, match=setting.env):
                s.resolve([setting], {setting.name: text}, environ={})
