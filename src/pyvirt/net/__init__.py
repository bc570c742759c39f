"""Host networking for VMs: TAP devices (`tap`), later bridges and namespaces."""
