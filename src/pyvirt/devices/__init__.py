"""Device models: plain Python objects over a guest-memory interface.

Nothing here imports `pyvirt.kvm` or `pyvirt.vmm`: devices see offsets on a
bus, an interrupt line (`IrqLine`) and a backend, so tests drive them with
fakes from `pyvirt.testing`.
"""
