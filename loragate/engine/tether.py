"""The engine's processes die with the gateway, however the gateway dies.

vLLM's engine core runs in a process the gateway spawns. When the gateway exits cleanly it
shuts the engine down, but when it is killed (the OOM killer, `kill -9`) nothing tells the
engine core, which then waits on its sockets for good, holding gigabytes: vLLM's workers watch
their engine core through a pipe, the engine core does not watch its parent. This vLLM general
plugin (entry point `loragate_engine_tether`) runs in every process vLLM starts; in a direct
child of a loragate gateway (named by LORAGATE_GATEWAY_PID, which the gateway sets before it
starts the engine) it asks Linux to kill the process when its parent goes (PR_SET_PDEATHSIG).
Other vLLM programs in the environment are left alone.

The signal follows the parent *thread* that spawned the child: the gateway builds the engine on
its main thread, which lives as long as the process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

GATEWAY_PID_ENV = "LORAGATE_GATEWAY_PID"
_PR_SET_PDEATHSIG = 1


def register() -> None:
    if not sys.platform.startswith("linux"):
        return
    gateway = os.environ.get(GATEWAY_PID_ENV)
    if gateway is None or gateway != str(os.getppid()):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if str(os.getppid()) != gateway:  # the gateway died before the request took effect
        os._exit(1)
