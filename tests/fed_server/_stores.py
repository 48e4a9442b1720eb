"""Store backends that fail as a disk does, for the fed server's fault tests."""

from __future__ import annotations

import errno

from fedsllm.state import DiskBackend


class FullDisk(DiskBackend):
    """A disk that fills up while `full` is set: every write fails as ENOSPC does."""

    full = False

    def write(self, name: str, data: bytes) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device", name)
        super().write(name, data)
