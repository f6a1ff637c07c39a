"""Every vendor family's file points its phone at our credentialed config server with the device's
own HTTP user and password, in the vendor's own settings (each documented with its source in the
record), read back the way the simulated firmware reads them; an assignment's own config server
wins and then no credential of ours is written."""

from __future__ import annotations

import pytest

from generator.render import Renderer
from generator.vendors import RECORDS, ConfigServer
from tests.test_vendor_records import ACCOUNTS, MAC, MODEL, full
from tools.simulate.vendors import VENDORS, check_file, config_server, file_names

PASSWORD = "Zq3_-kP9wXy2Lm8Rt5Vb7Nc4Hd6Jf1Ga"
USER_KEYS = {"grandstream": ("P1360", "P1361"),
             "yealink": ("static.auto_provision.server.username", "static.auto_provision.server.password"),
             "snom": ("http_client_user", "http_client_pass"),
             "fanvil": ("ap/DefaultUsername", "ap/DefaultPassword")}


def applied(vendor: str, assignment: dict, base: str = "http://10.0.0.5:8080/") -> list[list[tuple[str, str]]]:
    """The settings of each file, as the phone parses and checks them (every key documented in the
    record, every value allowed)."""
    rendered = Renderer().render(MAC, vendor, MODEL[vendor], "1.0.0.1", assignment,
                                 ConfigServer(base + "c/", MAC, PASSWORD))
    out = []
    for f in rendered.files:
        pairs = check_file(VENDORS[vendor], MODEL[vendor], MAC, f.name, f.body)
        assert RECORDS[vendor].problems(pairs) == []
        out.append(pairs)
    return out


@pytest.mark.parametrize("vendor", list(MODEL))
@pytest.mark.parametrize("base", ["http://10.0.0.5:8080/", "https://pnp.example.com/prov/"])
def test_the_file_sets_our_server_and_the_device_credentials(vendor: str, base: str) -> None:
    files = applied(vendor, {"accounts": ACCOUNTS}, base)
    pairs = [p for f in files for p in f]
    login = config_server(VENDORS[vendor], MODEL[vendor], MAC, pairs)
    assert login is not None
    assert login.urls == tuple(f"{base}c/{name}" for name in file_names(VENDORS[vendor], MAC, MODEL[vendor]))
    assert (login.user, login.password) == (MAC, PASSWORD)
    user_key, password_key = USER_KEYS[vendor]
    # each setting documented with a source, and the source names where it was found
    for key in USER_KEYS[vendor]:
        setting = RECORDS[vendor].setting(key)
        assert setting is not None and setting.source and "ours" in setting.meaning, key
    assert dict(pairs)[user_key] == MAC and dict(pairs)[password_key] == PASSWORD


def test_yealink_common_file_carries_no_credential() -> None:
    common, device = applied("yealink", {"accounts": ACCOUNTS})
    assert not any(k.startswith("static.auto_provision.server") for k, _ in common)
    assert dict(device)["static.auto_provision.server.url"] == "http://10.0.0.5:8080/c/"


def test_grandstream_upgrade_via_follows_our_scheme_and_dhcp_cannot_move_the_phone() -> None:
    (http,) = applied("grandstream", {"accounts": ACCOUNTS})
    (https,) = applied("grandstream", {"accounts": ACCOUNTS, "provisioning": {"protocol": "http"}},
                       "https://pnp.example.com/")
    assert (dict(http)["P212"], dict(http)["P145"], dict(http)["P237"]) == ("1", "0", "10.0.0.5:8080/c")
    # ours wins over the assignment's protocol for the config server (the firmware's stays its own)
    assert (dict(https)["P212"], dict(https)["P237"]) == ("2", "pnp.example.com/c")


def test_fanvil_protocol_follows_our_scheme() -> None:
    (http,) = applied("fanvil", {"accounts": ACCOUNTS})
    (https,) = applied("fanvil", {"accounts": ACCOUNTS}, "https://pnp.example.com/")
    assert (dict(http)["ap/FlashProtocol"], dict(http)["ap/FlashServerIP"]) == ("4", "http://10.0.0.5:8080/c")
    assert (dict(https)["ap/FlashProtocol"], dict(https)["ap/FlashServerIP"]) == ("5", "https://pnp.example.com/c")


@pytest.mark.parametrize("vendor", list(MODEL))
def test_an_assignments_own_config_server_wins_and_no_credential_of_ours_is_written(vendor: str) -> None:
    raw = {"grandstream": {"P8"}, "yealink": {"features.dnd.enable"}, "snom": {"dim_timer"},
           "fanvil": {"phone/KeyLockTimeout"}}[vendor]
    rendered = Renderer().render(MAC, vendor, MODEL[vendor], "1.0.0.1", full(vendor),
                                 ConfigServer("http://10.0.0.5:8080/c/", MAC, PASSWORD))
    for f in rendered.files:
        assert PASSWORD.encode() not in f.body and b"10.0.0.5" not in f.body
        pairs = check_file(VENDORS[vendor], MODEL[vendor], MAC, f.name, f.body, frozenset(raw))
        assert not any(k in USER_KEYS[vendor] for k, _ in pairs)
    login = config_server(VENDORS[vendor], MODEL[vendor], MAC,
                          [p for f in rendered.files for p in check_file(VENDORS[vendor], MODEL[vendor], MAC,
                                                                         f.name, f.body, frozenset(raw))])
    assert login is not None and all("prov.example.com/cfg" in url for url in login.urls)
    assert (login.user, login.password) == ("", "")


def test_a_record_refuses_a_credential_that_is_not_ours() -> None:
    assert RECORDS["grandstream"].problems([("P1361", "short"), ("P1360", "admin")]) != []
    assert RECORDS["yealink"].problems([("static.auto_provision.server.password", "pass word")]) != []
