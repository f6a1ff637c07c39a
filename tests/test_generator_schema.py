"""The compiled schema check never calls valid what jsonschema refuses, and accepts what it
accepts on realistic assignments (so the fast path is the one taken)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from generator import schema
from generator.fastcheck import compile_schema

# jsonschema with JSON Schema's meaning of "pattern" ($ is the end of the text), as schema.py uses it
FULL_V = schema.Validator(schema.SCHEMA)
PARTIAL_V = schema.Validator(schema._PARTIAL_SCHEMA)
FAST_FULL = compile_schema(schema.SCHEMA)
FAST_PARTIAL = compile_schema(schema._PARTIAL_SCHEMA)

odd = st.one_of(st.none(), st.booleans(), st.integers(-3, 70000), st.floats(allow_nan=False, allow_infinity=False),
                st.sampled_from(["", "udp", "tls", "sctp", "g722", "pcmu", "blf", "line", "a\nb", "P12", "x" * 300,
                                 "pbx.example.com", "pbx.example.com\n", "Alice\u2028", "A\x85", "bad host", "Europe/Berlin", "https://p.example.com/x"]),
                st.text(max_size=4), st.lists(st.sampled_from(["g722", "pcmu", 1]), max_size=3))


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid, valid, valid, odd)


account = st.fixed_dictionaries(
    {"sip_server": maybe(st.sampled_from(["pbx.example.com", "10.0.0.1:5060"]))},
    optional={"user_id": maybe(st.sampled_from(["1001", "alice"])),
              "port": maybe(st.integers(1, 65535)), "transport": maybe(st.sampled_from(["udp", "tcp", "tls"])),
              "password": maybe(st.text(max_size=6)), "display_name": maybe(st.text(max_size=6)),
              "enabled": maybe(st.booleans()), "colour": odd})
key = st.fixed_dictionaries({"type": maybe(st.sampled_from(["blf", "line", "speed_dial", "none"]))},
                            optional={"value": maybe(st.text(max_size=4)), "account": maybe(st.integers(1, 16)),
                                      "label": maybe(st.text(max_size=4))})
document = st.fixed_dictionaries({}, optional={
    "accounts": maybe(st.lists(maybe(account), max_size=3)),
    "codecs": maybe(st.lists(st.sampled_from(["g722", "pcmu", "pcma", "opus", "mp3"]), max_size=4)),
    "keys": maybe(st.lists(maybe(key), max_size=3)),
    "provisioning": maybe(st.fixed_dictionaries({}, optional={
        "config_server": maybe(st.sampled_from(["prov.example.com/x", "https://p/x"])),
        "protocol": maybe(st.sampled_from(["http", "https", "tftp", "ftp"])),
        "check_interval": maybe(st.integers(0, 50000))})),
    "time_zone": maybe(st.sampled_from(["Europe/Berlin", "CET-1CEST"])),
    "vendor_settings": maybe(st.dictionaries(st.sampled_from(["grandstream", "Yealink"]),
                                             maybe(st.dictionaries(st.sampled_from(["P1362", "a b", "P34\n"]), odd, max_size=2)),
                                             max_size=2)),
    "profile": maybe(st.sampled_from(["office", "bad name"])),
    "extra": odd,
})


@settings(max_examples=600, deadline=None)
@given(document)
def test_fast_check_never_accepts_what_jsonschema_refuses(doc) -> None:
    if FAST_FULL(doc):
        assert FULL_V.is_valid(doc), doc
    if FAST_PARTIAL(doc):
        assert PARTIAL_V.is_valid(doc), doc


def test_fast_check_accepts_realistic_assignments() -> None:
    from tests.test_generator_render import FULL

    smallest = {"accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "password": "s3cret",
                              "display_name": "Alice"}]}
    for doc in (FULL, smallest, {**smallest, "profile": "office", "vendor": "yealink", "model": "T46S"}):
        assert FULL_V.is_valid(doc) and FAST_FULL(doc)
    assert FAST_PARTIAL({"codecs": ["g722"], "ntp_server": "ntp.example.com"})


@settings(max_examples=600, deadline=None)
@given(document)
def test_missing_finds_what_the_full_schema_misses_in_a_valid_partial_document(doc) -> None:
    """``missing`` (what the engine checks of a merge, each layer having passed the partial
    schema) walks only the parts of the schema where something can be missing: it must say
    nothing exactly when jsonschema finds the document complete, and name one of its errors."""
    if not PARTIAL_V.is_valid(doc):
        return
    found = schema.missing(doc)
    errors = list(FULL_V.iter_errors(doc))
    assert (found is None) == (not errors), (doc, found, [e.message for e in errors])
    if found is not None:
        assert found.field and any(e.validator in ("required", "minItems") for e in errors)
