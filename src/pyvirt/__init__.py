"""pyvirt: the user-space half of the KVM virtualization stack, in Python."""

__version__ = "0.1.0"
