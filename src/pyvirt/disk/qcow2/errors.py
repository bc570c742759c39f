"""The qcow2 engine's exception: a corrupt, hostile or unsupported image."""

from __future__ import annotations

from ..errors import DiskError


class Qcow2Error(DiskError):
    """A qcow2 image is corrupt, truncated or uses a feature pyvirt does not
    support. The message names the file, the structure and its offset, so
    the user can tell a damaged image from an unsupported one."""
