"""Who may download a device's files, by kind of URL (no I/O: the HTTP side asks, this answers).

- The bootstrap URL (secret path, or a plain path) works while the device is enrolling, and,
  with ``pin_ip``, only for the address that discovered it (``candidate``) and the one that
  completed its first download (``bound``).
- The credentialed URL works in every state for the device's own HTTP credentials: the current
  password, and the previous one until the current revision's main file was served completely
  (the phone then holds the new one). A previous password once moved past stays refused, even
  when a later revision (an assignment change before the next rotation) still carries it.
"""

from __future__ import annotations

from fileserver.enrolment import CONFLICT, Enrolments
from fileserver.files import DeviceFiles
from fileserver.provision import ProvisionTracker, password_digest


class Gate:
    def __init__(self, enrolments: Enrolments, tracker: ProvisionTracker, pin_ip: bool) -> None:
        self.enrolments = enrolments
        self.tracker = tracker
        self.pin_ip = pin_ip

    def bootstrap(self, device: DeviceFiles, client: str, now: float) -> str | None:
        """None when ``client`` may have ``device``'s files on a bootstrap URL, else why not."""
        record = self.enrolments.get(device.mac)
        if record is None or not record.enrolling(now):
            if record is not None and record.state == CONFLICT:
                return "this device is in conflict (two addresses claimed it): re-arm it"
            return "this device is not enrolling: its phone uses its own credentials"
        if self.pin_ip and (record.candidate is not None and client != record.candidate
                            or record.bound is not None and client != record.bound):
            return "this file is served only to the device's own address"
        return None

    def passwords(self, device: DeviceFiles) -> tuple[str, ...]:
        """The HTTP passwords a credentialed download of ``device``'s files may prove."""
        if device.password is None:
            return ()
        if device.previous and not self.previous_done(device) and \
                not self.tracker.is_retired(device.mac, password_digest(device.previous)):
            return (device.password, device.previous)
        return (device.password,)

    def previous_done(self, device: DeviceFiles) -> bool:
        """The current revision's main file was served completely (a 200) at least once."""
        main = device.main
        return main is not None and self.tracker.served(device.mac, main.name) == main.sha256
