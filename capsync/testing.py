"""capsync's public testing module, as ``trio.testing`` is trio's.

Hold capsync (and your robot's config) to its promise in your own tests (docs/simulation.md):

- :class:`Simulation` builds a whole agent from your config, with the real cloud app in-process,
  under Trio's virtual clock; :class:`Accounting` is its account of every reading, and
  :class:`SimDisk` the simulated disk the disk-full rule sees;
- :class:`FaultPlan` injects faults (:class:`FaultKind`) at named points of any actor;
  :class:`Fault` is one rule, :class:`FaultEvent` one firing, :class:`InjectedFault` what a
  ``RAISE`` fault raises by default;
- :class:`FaultProxy` is a fault-injecting TCP proxy (cuts, partitions, stalls, throttling,
  resets mid-body) for tests with real processes, and :class:`ProxyThread` runs one on its own
  loop for synchronous tests;
- :class:`PowerCutFS` mounts a FUSE file system that forgets, when :meth:`PowerCutFS.cut` cuts
  its power, everything a real disk may forget (file bytes not fsynced, directory entries whose
  directory was not fsynced), optionally with a torn write; :class:`CutReport` says what it
  forgot, :class:`TornWrite` one torn file, :class:`PowerCutStats` its counters,
  :class:`PowerCutError` why it could not mount, and :func:`fuse_unavailable` why FUSE cannot
  be mounted here at all (for a skip reason).
"""

from capsync.actors.sim import Accounting, Simulation
from capsync.runtime.faultproxy import FaultProxy, ProxyStats, ProxyThread
from capsync.runtime.powercut.control import PowerCutError, PowerCutFS, PowerCutStats, fuse_unavailable
from capsync.runtime.powercut.model import CutReport, TornWrite
from capsync.runtime.faults import Fault, FaultEvent, FaultKind, FaultPlan, InjectedFault
from capsync.runtime.sim_parts import SimDisk

__all__ = [
    "Accounting", "Fault", "FaultEvent", "FaultKind", "FaultPlan", "FaultProxy", "InjectedFault",
    "ProxyStats", "ProxyThread", "SimDisk", "Simulation", "PowerCutFS", "PowerCutError", "PowerCutStats",
    "CutReport", "TornWrite", "fuse_unavailable",
]
