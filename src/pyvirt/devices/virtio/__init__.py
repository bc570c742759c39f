"""Virtio: the split ring (`queue`), the transports (`mmio`, `pci`) and the
devices (`blk`, `net`, `console`, `rng`, `vsock`, `balloon`).

Devices never see a transport: a transport owns the common registers (status,
features, queue addresses) and hands a device its ready queues and an
`Interrupt` when the driver sets DRIVER_OK (`VirtioDevice.activate`). Queue
processing happens on the I/O thread (`iothread`), not on vCPU threads.
"""
