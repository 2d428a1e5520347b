"""OS-level names for the service's own threads.

Python 3.11 names a thread only inside Python; ``top -H``, ``ps -L`` and
``/proc/<pid>/task/*/comm`` show every thread as "python". The batcher names its model and
monitoring threads so operators and the benchmarks can tell their CPU apart.
"""

from __future__ import annotations

import ctypes

# At most 15 bytes each (the kernel's limit).
MODEL_THREAD = "fc-model"
MONITOR_THREAD = "fc-monitor"
SHADOW_THREAD = "fc-shadow"
LOADER_THREAD = "fc-loader"
_PR_SET_NAME = 15


def name_os_thread(name: str) -> None:
    """Name the calling thread for the OS. Linux only; elsewhere it keeps its default name."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl outside Linux
        pass
