"""The power-cut file system: a FUSE pass-through that forgets, on a power cut, everything a real
disk may forget (unsynced file bytes, unsynced directory entries). Public names are exported by
capsync.testing; docs/simulation.md describes them.

model.py is the durability model (no FUSE), fs.py its FUSE operations (pyfuse3), daemon.py the
process that serves the mount, control.py the controller tests use.
"""
