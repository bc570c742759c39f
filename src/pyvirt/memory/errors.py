"""Errors of the guest-memory layer."""


class GuestMemoryError(ValueError):
    """A guest-physical access fell outside the guest's memory."""
