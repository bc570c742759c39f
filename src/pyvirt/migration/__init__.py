"""Live migration: pre-copy over KVM's dirty log, switchover, post-copy.

`source.py` runs on the VM being moved (started through its control API),
`destination.py` is `pyvirt run --incoming`, `stream.py` is the wire
protocol between them, `dirty.py` finds the pages to send again, `disks.py`
hands the disk images over and `postcopy.py` serves the destination's page
faults after the VM moved. docs/migration.md describes it for users.
"""
