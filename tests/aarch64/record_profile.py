"""Record the kernel profile an aarch64 agent observes (tests/data/devices), run under qemu-user:

    qemu-aarch64-static -cpu cortex-a72 -L DIR/rootfs -E PYTHONPATH=.:DIR/site DIR/rootfs/usr/bin/python3.11 \\
        tests/aarch64/record_profile.py tests/data/devices/arm_cortex_a72_ort_1.24.4.json

(DIR: tests/aarch64/build_env.sh's environment). The unit tests of predictor.runtime.devices hold this host's runtime
against it, as recorded TensorRT inspector output stands in for a GPU.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from predictor.runtime.devices import observe_kernel_profile
from predictor.runtime.optimizer import local_runtime

if __name__ == "__main__":
    profile = observe_kernel_profile(local_runtime(1))
    Path(sys.argv[1]).write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
    print(profile.describe())
