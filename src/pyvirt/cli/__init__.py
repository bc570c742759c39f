"""The `pyvirt` command."""
