"""The largest values the runtime takes for its integer settings, in one place.

The command line declares its ranges (``click.IntRange``) with these and the library refuses the
same values with InvalidArgumentError, so both say the same thing.  Standard library only: the CLI
imports this at start-up, before it knows whether it will load a model.
"""

from __future__ import annotations

#: ONNX Runtime intra-op threads: more threads than any machine has cores only adds contention (ONNX
#: Runtime stores the count in a C int and spawns every thread when a session opens).
MAX_THREADS = 1024
#: GPU index: ONNX Runtime keeps it in ``OrtDevice::DeviceId``, an int16_t.
MAX_DEVICE_ID = 2**15 - 1
#: A free-dimension override: ONNX Runtime takes an int64, but no tensor with a dimension past int32
#: can be fed on the machines edgegen targets, so a larger size is a typo.
MAX_FREE_DIMENSION = 2**31 - 1
