"""The in-memory index the request path reads: token -> device, file name -> devices.

Built from the store at start and kept in step with it, so serving a file is two dict
look-ups, never a database read. A device's token is its enrolment epoch's (``epochs``): a new
epoch re-indexes it and the old URL stops working.
"""

from __future__ import annotations

from typing import Any

from services.messages import FileList, ListedFile, Published, PublishedFile, encode_json
from fileserver.files import DeviceFiles
from fileserver.tokens import device_token


class Catalog:
    def __init__(self, secret: str, public_url: str) -> None:
        self.secret = secret
        self.public_url = public_url  # ends in "/"
        self.devices: dict[str, DeviceFiles] = {}
        self.epochs: dict[str, int] = {}  # mac -> its enrolment epoch (0: none yet)
        self._tokens: dict[str, str] = {}  # token -> mac
        self._names: dict[str, set[str]] = {}  # file name -> macs
        self._token_of: dict[str, tuple[int, str]] = {}  # mac -> (epoch, its token)
        # the last published/files payload made per device, with what it was made from: the
        # core asks for them on every config and enrolment move to compare with what the broker
        # holds, and they change only with the device's files, epoch or enrolling
        self._published: dict[str, tuple[DeviceFiles, int, bool, bytes]] = {}
        self._file_lists: dict[str, tuple[DeviceFiles, bytes]] = {}

    def token(self, mac: str) -> str:
        # an HMAC, asked for by every published payload and index move: made once per epoch
        epoch = self.epochs.get(mac, 0)
        cached = self._token_of.get(mac)
        if cached is None or cached[0] != epoch:
            cached = self._token_of[mac] = (epoch, device_token(self.secret, mac, epoch))
        return cached[1]

    def set_epoch(self, mac: str, epoch: int) -> None:
        """The device's epoch moved: its URL with it."""
        if self.epochs.get(mac, 0) == epoch:
            return
        known = mac in self.devices
        if known:
            self._tokens.pop(self.token(mac), None)
        self.epochs[mac] = epoch
        if known:
            self._tokens[self.token(mac)] = mac

    def base_url(self, mac: str) -> str:
        """The device's directory: ``{PNP_PUBLIC_URL}p/{token}/``."""
        return f"{self.public_url}p/{self.token(mac)}/"

    def set(self, device: DeviceFiles) -> None:
        self._unindex(device.mac)
        self.devices[device.mac] = device
        # payloads of the files replaced would keep their bodies alive until next asked for
        self._published.pop(device.mac, None)
        self._file_lists.pop(device.mac, None)
        self._tokens[self.token(device.mac)] = device.mac
        for name in device.files:
            self._names.setdefault(name, set()).add(device.mac)

    def remove(self, mac: str) -> DeviceFiles | None:
        old = self._unindex(mac)
        self.devices.pop(mac, None)
        # after its token: the token is the epoch's, and a removed device's URL must not stay live
        self.epochs.pop(mac, None)
        self._token_of.pop(mac, None)
        self._published.pop(mac, None)
        self._file_lists.pop(mac, None)
        return old

    def _unindex(self, mac: str) -> DeviceFiles | None:
        self._tokens.pop(self.token(mac), None)
        old = self.devices.get(mac)
        if old is None:
            return None
        for name in old.files:
            macs = self._names.get(name)
            if macs is not None:
                macs.discard(mac)
                if not macs:
                    del self._names[name]
        return old

    def by_token(self, token: str) -> DeviceFiles | None:
        mac = self._tokens.get(token)
        return self.devices.get(mac) if mac is not None else None

    def by_name(self, name: str) -> list[DeviceFiles]:
        return [self.devices[mac] for mac in sorted(self._names.get(name, ()))]

    def published(self, mac: str, enrolling: bool = True) -> Published:
        """What ``devices/{mac}/published`` says: the NOTIFY's URL and every file's URL and sha256,
        and whether they work (``enrolling``) in which epoch."""
        device = self.devices[mac]
        base = self.base_url(mac)
        files = [PublishedFile(name=f.name, url=base + f.name, sha256=f.sha256)
                 for f in sorted(device.files.values(), key=lambda f: f.name)]
        return Published(url=base + device.notify_path, files=files, revision=device.revision,
                         mac=mac, vendor=device.vendor, enrolling=enrolling,
                         epoch=self.epochs.get(mac, 0))

    def published_json(self, mac: str, enrolling: bool = True) -> bytes:
        """``published(mac, enrolling).to_json()``, made once per files, epoch and enrolling."""
        device, epoch = self.devices[mac], self.epochs.get(mac, 0)
        cached = self._published.get(mac)
        if cached is not None and cached[0] is device and cached[1] == epoch and cached[2] == enrolling:
            return cached[3]
        payload = _encode(self.published(mac, enrolling))
        self._published[mac] = (device, epoch, enrolling, payload)
        return payload

    def files_json(self, mac: str) -> bytes:
        """``files(mac).to_json()``, made once per files."""
        device = self.devices[mac]
        cached = self._file_lists.get(mac)
        if cached is not None and cached[0] is device:
            return cached[1]
        payload = _encode(self.files(mac))
        self._file_lists[mac] = (device, payload)
        return payload

    def files(self, mac: str) -> FileList:
        """What ``devices/{mac}/files`` says: every file's name, sha256 and size (no URL)."""
        device = self.devices[mac]
        files = [ListedFile(name=f.name, sha256=f.sha256, size=len(f.body))
                 for f in sorted(device.files.values(), key=lambda f: f.name)]
        return FileList(files=files, revision=device.revision, mac=mac, vendor=device.vendor)

    @property
    def file_count(self) -> int:
        return sum(len(d.files) for d in self.devices.values())


def _encode(payload: Published | FileList) -> bytes:
    """``payload.to_json()`` without dataclasses.asdict's deep copy (half its cost): the same
    bytes, as the payload's one list holds flat payloads whose fields are plain values."""
    data: dict[str, Any] = {**vars(payload), "v": payload.v}
    data["files"] = [vars(f) for f in payload.files]
    return encode_json(data)
