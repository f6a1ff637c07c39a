"""The generator's core: inputs in (discoveries, assignments, profiles), effects out.

No sockets and no reactor: the MQTT side (``service.py``) feeds messages in and carries out the
:class:`Publish`, :class:`Unpublish`, :class:`Error` and :class:`Clear` effects it gets back.
A device renders once it has a valid assignment and a vendor and model (discovered, or pre-staged
in the assignment; the discovered ones win). The same inputs give the same bytes; ``revision``
rises only when the bytes change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from generator import schema
from generator.merge import merge_all, strip_nulls
from generator.render import Rendered, Renderer
from generator.store import RenderRecord, Store
from generator import vendors
from generator.vendors import RenderProblem
from services.messages import Config, ConfigFile, ResyncCredentials
from services.topics import is_mac


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


Effect = Publish | Unpublish | Error | Clear | Credentials

DEFAULT_PROFILE = "default"


@dataclass
class Device:
    mac: str
    vendor: str = ""
    model: str = ""
    firmware: str = ""
    assignment: dict[str, Any] | None = None
    problem: Error | None = None  # the assignment as received cannot be used
    published: str = ""  # digest published in this session ("" = nothing yet)
    # (family, canonical model) of that published render: a discovery naming the same phone
    # changes nothing a render reads but the firmware, which never re-renders (discovered())
    rendered_as: tuple[str, str] = ("", "")


@dataclass
class Profile:
    data: dict[str, Any] | None = None
    problem: str | None = None


@dataclass
class Stats:
    renders: int = 0
    changed: int = 0
    errors: int = 0
    waiting: int = 0
    skipped: int = 0  # discoveries that matched the published render: not rendered again


def spelled_mac(segment: str) -> str | None:
    """The contract's spelling of a MAC written another way (``00:0B:82:F5:52:84``), if it is one."""
    digits = "".join(c for c in segment.lower() if c not in ":-.")
    return digits if is_mac(digits) else None


class Engine:
    def __init__(self, renderer: Renderer, store: Store) -> None:
        self.renderer = renderer
        self.store = store
        self.devices: dict[str, Device] = {}
        self.profiles: dict[str, Profile] = {}
        self.records: dict[str, RenderRecord] = store.renders()
        self.stats = Stats()
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
        if not is_mac(segment) or not isinstance(data, dict):
            return []
        vendor, model = str(data.get("vendor") or ""), str(data.get("model") or "")
        firmware = str(data.get("firmware") or "")
        device = self._device(segment)
        if (device.vendor, device.model, device.firmware) == (vendor, model, firmware):
            return []
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
                return []
            return self.render(segment)
        return []

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
            return []
        try:
            rendered = self.renderer.render(mac, vendor, model, device.firmware, merged)
        except RenderProblem as exc:
            return self._fail(mac, Error(mac, exc.code, exc.message, exc.field))
        self.stats.renders += 1
        effects = self._succeed(device, rendered)
        for effect in effects:
            if isinstance(effect, Publish):
                # With every config, so the notifier knows the password of each revision.
                effects.append(Credentials(mac, resync_credentials(mac, merged, effect.config.revision)))
                break
        return effects

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

    def _succeed(self, device: Device, rendered: Rendered) -> list[Effect]:
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
        device.rendered_as = (rendered.vendor, rendered.model)
        if digest != device.published:
            device.published = digest
            effects.append(Publish(mac, config_of(mac, rendered, record.revision)))
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


def config_of(mac: str, rendered: Rendered, revision: int) -> Config:
    files = [ConfigFile(name=f.name, content_type=f.content_type, content=f.body.decode("utf-8"),
                        encoding="utf-8", sha256=f.sha256, size=len(f.body)) for f in rendered.files]
    return Config(files=files, revision=revision, template=rendered.template, mac=mac,
                  vendor=rendered.vendor, model=rendered.model, notify_path=rendered.notify_path)

