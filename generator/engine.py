"""The generator's core: inputs in (discoveries, assignments, profiles), effects out.

No sockets and no reactor: the MQTT side (``service.py``) feeds messages in and carries out the
:class:`Publish`, :class:`Unpublish`, :class:`Error` and :class:`Clear` effects it gets back.
A device renders once it has a valid assignment and a vendor and model (discovered, or pre-staged
in the assignment; the discovered ones win). The same inputs give the same bytes; ``revision``
rises only when the bytes change.

Each device has its own HTTP password (user: its MAC), made at its first rendering (or as it starts
waiting for its phone's discovery) and kept in the store; its files tell the phone to fetch from ``{PNP_PUBLIC_URL}c/`` with it, and its config
carries it (``auth``) for the fileserver, with ``enrol``, what its enrolment epoch is opened for.
The ``rearm`` and ``rotate`` commands replace the password, each acted on once per id.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Callable

from generator import schema
from generator.merge import merge_all, strip_nulls
from generator.render import Rendered, Renderer
from generator.store import Credential, RenderRecord, Store
from generator import vendors
from generator.vendors import ConfigServer, RenderProblem
from services.messages import (
    Command, Config, ConfigFile, Enrol, HttpAuth, PayloadError, ResyncCredentials, encode_json,
)
from services.topics import COMMAND_KINDS, is_mac


@dataclass(frozen=True)
class Publish:
    mac: str
    config: Config


@dataclass(frozen=True)
class Unpublish:
    mac: str


@dataclass(frozen=True)
class Error:
    mac: str  # the topic segment: may be a MAC in the wrong spelling
    code: str
    message: str
    field: str | None = None


@dataclass(frozen=True)
class Clear:
    mac: str


@dataclass(frozen=True)
class Credentials:
    """The notifier-only ``resync`` topic: what the phone checks when it challenges a NOTIFY.
    None clears it."""

    mac: str
    credentials: ResyncCredentials | None


@dataclass(frozen=True)
class Refused:
    """A command that cannot be acted on: logged and counted, nothing else changes."""

    mac: str
    kind: str
    message: str


@dataclass(frozen=True)
class Acted:
    """A command acted on (the credential is replaced; a rendering follows when ready)."""

    mac: str
    kind: str
    id: str


Effect = Publish | Unpublish | Error | Clear | Credentials | Refused | Acted

COMMANDS = COMMAND_KINDS
COMMAND_ID_MAX = 200  # characters: an id is a name, not a document

DEFAULT_PROFILE = "default"


@dataclass
class Device:
    mac: str
    vendor: str = ""
    model: str = ""
    firmware: str = ""
    assignment: dict[str, Any] | None = None
    problem: Error | None = None  # the assignment as received cannot be used
    # (the digest, then the auth and enrol stamp, of what was published: _succeed)
    published: str = ""  # digest published in this session ("" = nothing yet)
    # (family, canonical model) of that published render: a discovery naming the same phone
    # changes nothing a render reads but the firmware, which never re-renders (discovered())
    rendered_as: tuple[str, str] = ("", "")
    # While the device waits for its phone to say what it is: the assignment merged with its
    # profiles (already checked) and the profiles' version it was merged with (render())
    merged: dict[str, Any] | None = None
    merged_with: int = -1
    # assignment_digest(assignment), made once per assignment ("" = not yet)
    assignment_digest: str = ""


@dataclass
class Profile:
    data: dict[str, Any] | None = None
    problem: str | None = None


@dataclass
class Stats:
    renders: int = 0
    changed: int = 0
    errors: int = 0
    commands: int = 0
    commands_refused: int = 0
    waiting: int = 0
    skipped: int = 0  # discoveries that matched the published render: not rendered again


def spelled_mac(segment: str) -> str | None:
    """The contract's spelling of a MAC written another way (``00:0B:82:F5:52:84``), if it is one."""
    digits = "".join(c for c in segment.lower() if c not in ":-.")
    return digits if is_mac(digits) else None


def new_password() -> str:
    return secrets.token_urlsafe(24)


class Engine:
    def __init__(self, renderer: Renderer, store: Store, public_url: str | None = None,
                 passwords: Callable[[], str] = new_password) -> None:
        self.renderer = renderer
        self.store = store
        # None: no server of ours goes into the files (they keep the bootstrap-only flow)
        self.public_url = public_url
        self.passwords = passwords
        self.devices: dict[str, Device] = {}
        self.profiles: dict[str, Profile] = {}
        self.records: dict[str, RenderRecord] = store.renders()
        self.credentials: dict[str, Credential] = store.credentials()
        # commands that came before ready, acted on by :meth:`act_pending` (retained ones replay
        # at start in any order: the reseed must have given back the last ids first)
        self.pending: dict[tuple[str, str], str] = {}
        self.stats = Stats()
        # devices whose credential was made or replaced and is not yet known committed: the
        # service commits before it publishes a config of theirs (unsaved_credential)
        self.unsaved_credentials: set[str] = set()
        # rises with every change of a profile: a merge made before it is stale
        self.profiles_version = 0
        # Before ready, inputs are only recorded: at startup the retained messages arrive in any
        # order, and rendering before the profiles are in would bump revisions twice.
        self.ready = False

    def _device(self, mac: str) -> Device:
        device = self.devices.get(mac)
        if device is None:
            device = self.devices[mac] = Device(mac)
        return device

    # --- inputs ---
    def discovered(self, segment: str, data: Any) -> list[Effect]:
        return self.render(segment) if self.discovery(segment, data) else []

    def discovery(self, segment: str, data: Any) -> bool:
        """Record a discovery; True when the device is to be rendered for it (the service may
        put that rendering off to a later turn: :meth:`render` reads the state of that time)."""
        if not is_mac(segment) or not isinstance(data, dict):
            return False
        vendor, model = str(data.get("vendor") or ""), str(data.get("model") or "")
        firmware = str(data.get("firmware") or "")
        device = self._device(segment)
        if (device.vendor, device.model, device.firmware) == (vendor, model, firmware):
            return False
        changed = (device.vendor, device.model) != (vendor, model)
        device.vendor, device.model, device.firmware = vendor, model, firmware
        self.store.put_device(segment, vendor, model, firmware)
        if changed and self.ready and device.assignment is not None:
            record = self.records.get(segment)
            if (device.published and record is not None and not record.errored
                    and self._renders_as(vendor, model) == device.rendered_as):
                # A pre-staged phone booting as what it was staged as: the same bytes again. The
                # render (0.3-0.7 ms) would sit on the discovery's path for nothing.
                self.stats.skipped += 1
                return False
            return True
        return False

    @staticmethod
    def _renders_as(vendor: str, model: str) -> tuple[str, str] | None:
        """What a render takes a discovered vendor and model for; None when it would not take
        them (unnamed: the pre-staged ones count) or has no template for them (its error)."""
        if not vendor or vendor == "unknown" or not model:
            return None
        try:
            family, canonical = vendors.find(vendor, model)
        except RenderProblem:
            return None
        return family.vendor, canonical

    def assignment(self, segment: str, raw: bytes, data: Any, error: str | None) -> list[Effect]:
        if not is_mac(segment):
            if not raw:
                return [Clear(segment)]
            right = spelled_mac(segment)
            hint = (f"; publish it on the topic with {right} instead" if right
                    else "; a MAC is 12 hex digits")
            return [Error(segment, "mac", f"{segment!r} is not a MAC as topics write it (12 lower-case hex "
                          f"digits, like 000b82f55284){hint}", "mac")]
        device = self._device(segment)
        device.merged, device.assignment_digest = None, ""
        if not raw:
            self.store.put_assignment(segment, None)
            device.assignment, device.problem, device.published = None, None, ""
            record = self.records.get(segment)
            effects: list[Effect] = [Unpublish(segment), Credentials(segment, None)]
            if record is not None:
                # A later assignment counts as new, even with the same bytes.
                record.digest = ""
                self.store.forget_digest(segment)
                if record.errored:
                    record.errored = False
                    self.store.set_errored(segment, False)
                    effects.append(Clear(segment))
            return effects
        if error is not None:
            device.problem = Error(segment, "json", f"the assignment is not usable JSON: {error}")
        elif not isinstance(data, dict):
            device.problem = Error(segment, "schema", "the assignment must be a JSON object, "
                                   f"not {type(data).__name__}")
        else:
            # Checked once as it arrives; a merge of valid parts can then only lack required
            # fields, which render() checks cheaply (a profile change re-renders thousands).
            found = schema.first_problem(strip_nulls(data), partial=True)
            if found is not None:
                device.problem = Error(segment, found.code, found.message, found.field)
            else:
                device.problem = None
                device.assignment = data
                self.store.put_assignment(segment, raw.decode("utf-8", "replace"))
        if not self.ready:
            return []
        if device.problem is not None:
            return self._fail(segment, device.problem)
        return self.render(segment)

    def profile(self, name: str, raw: bytes, data: Any, error: str | None) -> list[str]:
        """Record a profile; returns the MACs to re-render (sorted), once ready."""
        self.profiles_version += 1
        if not raw:
            self.profiles.pop(name, None)
            self.store.put_profile(name, None)
        elif error is not None:
            self.profiles[name] = Profile(None, f"it is not usable JSON: {error}")
        elif not isinstance(data, dict):
            self.profiles[name] = Profile(None, "it must be a JSON object")
        else:
            found = schema.first_problem(strip_nulls(data), partial=True)
            self.profiles[name] = Profile(data, found.message if found else None)
            self.store.put_profile(name, raw.decode("utf-8", "replace"))
        if not self.ready:
            return []
        return self.users_of(name)

    def command(self, kind: str, segment: str, raw: bytes, data: Any, error: str | None) -> list[Effect]:
        """A ``rearm`` or ``rotate`` command. A new id replaces the device's password at once:
        ``rearm`` forgets the old one (an attacker that read a file must not keep a working
        credential) and opens a new enrolment epoch; ``rotate`` keeps it as ``previous`` so the
        phone can fetch the file with the new one. An id seen last time does nothing (replay)."""
        if kind not in COMMANDS or not raw:
            return []  # an empty payload clears a retained command: nothing to do
        if not is_mac(segment):
            right = spelled_mac(segment)
            self.stats.commands_refused += 1
            return [Refused(segment, kind, f"the {kind} command is on {segment!r}, not a MAC as topics write "
                            "it" + (f": publish it on the topic with {right}" if right else ""))]
        problem = error
        command: Command | None = None
        if problem is None:
            try:
                command = Command.from_json(data if isinstance(data, dict) else raw)
            except PayloadError as exc:
                problem = str(exc)
        if command is not None and not command.id.strip():
            problem = "id is empty"
        elif command is not None and len(command.id) > COMMAND_ID_MAX:
            problem = f"id is longer than {COMMAND_ID_MAX} characters"
        if problem is not None or command is None:
            self.stats.commands_refused += 1
            return [Refused(segment, kind, f"the {kind} command is not usable: {problem}")]
        if not self.ready:
            self.pending[(segment, kind)] = command.id
            return []
        return self._act(segment, kind, command.id)

    def act_pending(self) -> list[Effect]:
        """Act on the commands that came before ready (without rendering: the first rendering of
        every device follows)."""
        effects: list[Effect] = []
        pending, self.pending = self.pending, {}
        for (mac, kind), id_ in sorted(pending.items()):
            effects += self._act(mac, kind, id_, render=False)
        return effects

    def _act(self, mac: str, kind: str, id_: str, render: bool = True) -> list[Effect]:
        old = self.credentials.get(mac)
        if old is not None and (old.rearm if kind == "rearm" else old.rotate) == id_:
            return []  # acted on already (a replay, or the same command again)
        if kind == "rearm":
            new = Credential(self.passwords(), None, id_, old.rotate if old else "")
        else:
            new = Credential(self.passwords(), old.password if old else None, old.rearm if old else "", id_)
        self._keep(mac, new)
        self.stats.commands += 1
        effects: list[Effect] = [Acted(mac, kind, id_)]
        if render:
            effects += self.render(mac)
        return effects

    def recover_credential(self, mac: str, credential: Credential) -> None:
        """A credential taken back from our retained config after the store was rebuilt: the
        phones hold it, so it must not change."""
        if mac not in self.credentials:
            self._keep(mac, credential)

    def _credential(self, mac: str) -> Credential:
        found = self.credentials.get(mac)
        if found is None:
            found = Credential(self.passwords())
            self._keep(mac, found)
        return found

    def _keep(self, mac: str, credential: Credential) -> None:
        self.credentials[mac] = credential
        self.store.put_credential(mac, credential)
        self.unsaved_credentials.add(mac)

    def unsaved_credential(self, mac: str) -> bool:
        """Whether the device's credential was made or replaced since the store last committed
        (``credentials_committed``): a config carrying it must wait for a commit."""
        return mac in self.unsaved_credentials

    def credentials_committed(self) -> None:
        """The store committed: every credential made so far is on disk."""
        self.unsaved_credentials.clear()

    def users_of(self, name: str) -> list[str]:
        return sorted(mac for mac, d in self.devices.items()
                      if d.assignment is not None and (name == DEFAULT_PROFILE or d.assignment.get("profile") == name))

    def assigned(self) -> list[str]:
        return sorted(mac for mac, d in self.devices.items() if d.assignment is not None or d.problem)

    # --- rendering ---
    def render(self, mac: str) -> list[Effect]:
        device = self.devices.get(mac)
        if device is None or (device.assignment is None and device.problem is None):
            return []
        if device.problem is not None:
            return self._fail(mac, device.problem)
        merged = device.merged if device.merged_with == self.profiles_version else None
        if merged is None:
            try:
                merged = self._merged(device)
            except RenderProblem as exc:
                return self._fail(mac, Error(mac, exc.code, exc.message, exc.field))
            found = schema.missing(merged)
            if found is not None:
                return self._fail(mac, Error(mac, found.code, found.message, found.field))
        vendor, model = self._identity(device, merged)
        if not vendor or not model:
            self.stats.waiting += 1
            # Its first rendering will be on the phone's path, between its discovery and its
            # NOTIFY: what does not depend on the phone is done now, while nobody waits. The
            # merge and its check, the assignment's digest, and the credential, whose commit
            # must come before the config that carries it: the batched commit takes it now,
            # rather than a commit of its own after the discovery.
            device.merged, device.merged_with = merged, self.profiles_version
            self._assignment_digest(device)
            self._credential(mac)
            return []
        device.merged = None  # rendered: the next rendering merges what is current
        credential = self._credential(mac)
        server = (ConfigServer(self.public_url + "c/", mac, credential.password)
                  if self.public_url else None)
        try:
            rendered = self.renderer.render(mac, vendor, model, device.firmware, merged, server)
        except RenderProblem as exc:
            return self._fail(mac, Error(mac, exc.code, exc.message, exc.field))
        self.stats.renders += 1
        auth = HttpAuth(user=mac, password=credential.password, previous=credential.previous,
                        rotate=credential.rotate)
        # the PBX's own assignment, not the merge: a profile change (codecs for the whole fleet) is
        # not a new enrolment of every phone that uses it; a provisioned phone gets it by check-sync
        enrol = Enrol(assignment=self._assignment_digest(device), rearm=credential.rearm)
        effects = self._succeed(device, rendered, auth, enrol)
        for effect in effects:
            if isinstance(effect, Publish):
                # With every config, so the notifier knows the password of each revision.
                effects.append(Credentials(mac, resync_credentials(mac, merged, effect.config.revision)))
                break
        return effects

    @staticmethod
    def _assignment_digest(device: Device) -> str:
        if not device.assignment_digest:
            assert device.assignment is not None  # only a device with one renders
            device.assignment_digest = assignment_digest(device.assignment)
        return device.assignment_digest

    @staticmethod
    def _identity(device: Device, merged: dict[str, Any]) -> tuple[str, str]:
        """The discovered vendor and model when the listener could name both, else pre-staged."""
        discovered = (device.vendor, device.model)
        staged = (str(merged.get("vendor", "")), str(merged.get("model", "")))
        if device.vendor and device.vendor != "unknown" and device.model:
            return discovered
        if all(staged):
            return staged
        return discovered

    def _merged(self, device: Device) -> dict[str, Any]:
        assert device.assignment is not None
        names = [DEFAULT_PROFILE]
        named = device.assignment.get("profile")
        if isinstance(named, str) and named != DEFAULT_PROFILE:
            names.append(named)
        layers: list[Any] = []
        for name in names:
            profile = self.profiles.get(name)
            if profile is None:
                if name == DEFAULT_PROFILE:  # optional: applies only when it exists
                    continue
                raise RenderProblem("profile", f"profile {name!r} does not exist (nothing is retained on "
                                    f"its topic)", "profile")
            if profile.problem is not None:
                raise RenderProblem("profile", f"profile {name!r} cannot be used: {profile.problem}", "profile")
            layers.append(profile.data)
        merged: dict[str, Any] = merge_all(*layers, device.assignment)  # dicts over a dict
        return merged

    def _succeed(self, device: Device, rendered: Rendered, auth: HttpAuth, enrol: Enrol) -> list[Effect]:
        mac = device.mac
        record = self.records.setdefault(mac, RenderRecord())
        digest = rendered.digest
        effects: list[Effect] = []
        if digest != record.digest:
            record.revision += 1
            record.digest = digest
            self.stats.changed += 1
            self.store.save_render(mac, record.revision, digest, rendered.template, rendered.vendor,
                                   rendered.model, False)
            was_errored, record.errored = record.errored, False
        else:
            was_errored = record.errored
            if was_errored:
                record.errored = False
                self.store.set_errored(mac, False)
        # A re-arm changes the config without changing the bytes when the assignment names its
        # own config server (no credential of ours in the files): it is published all the same.
        device.rendered_as = (rendered.vendor, rendered.model)
        stamp = f"{digest}:{_stamp(auth, enrol)}"
        if stamp != device.published:
            device.published = stamp
            effects.append(Publish(mac, config_of(mac, rendered, record.revision, auth, enrol)))
        if was_errored:
            effects.append(Clear(mac))
        return effects

    def _fail(self, mac: str, error: Error) -> list[Effect]:
        self.stats.errors += 1
        record = self.records.setdefault(mac, RenderRecord())
        if not record.errored:
            record.errored = True
            self.store.set_errored(mac, True)
        return [error]


def resync_credentials(mac: str, merged: dict[str, Any], revision: int) -> ResyncCredentials | None:
    """Account 1's authentication name and password: what a Grandstream or snom phone checks a
    challenged NOTIFY against (docs/NOTIFIER.md, "Phones that challenge"). None without one."""
    accounts = merged.get("accounts") or []
    if not accounts or not isinstance(accounts[0], dict) or not accounts[0].get("user_id"):
        return None
    first = accounts[0]
    return ResyncCredentials(revision=revision, username=str(first.get("auth_id") or first["user_id"]),
                             password=str(first.get("password") or ""), mac=mac)


def assignment_digest(assignment: dict[str, Any]) -> str:
    """16 hex digits naming an assignment as the PBX published it: equal when it is the same,
    whatever order its keys came in."""
    return hashlib.sha256(encode_json(assignment)).hexdigest()[:16]


def _stamp(auth: HttpAuth, enrol: Enrol) -> str:
    # Compared, never published; plain text costs a few hundred times less than a JSON digest.
    return "\0".join((auth.password, auth.previous or "", auth.rotate, enrol.assignment, enrol.rearm))


def config_json(config: Config) -> bytes:
    """``config.to_json()``, the same bytes, without dataclasses.asdict: its deep copy of every
    file's text was a tenth of a rendering. Each part holds plain values only; as to_dict, only
    the outer object carries ``v``."""
    data = {**vars(config), "v": config.v, "files": [vars(f) for f in config.files],
            "auth": None if config.auth is None else vars(config.auth),
            "enrol": None if config.enrol is None else vars(config.enrol)}
    return encode_json(data)


def config_of(mac: str, rendered: Rendered, revision: int, auth: HttpAuth | None = None,
              enrol: Enrol | None = None) -> Config:
    files = [ConfigFile(name=f.name, content_type=f.content_type, content=f.body.decode("utf-8"),
                        encoding="utf-8", sha256=f.sha256, size=len(f.body)) for f in rendered.files]
    return Config(files=files, revision=revision, template=rendered.template, mac=mac,
                  vendor=rendered.vendor, model=rendered.model, notify_path=rendered.notify_path,
                  auth=auth, enrol=enrol)

