"""The virtual machine monitor: config → running VM, vCPU threads, console."""
