"""Loaded into job processes (TUNEYARD_PLUGINS) by the save kill test: while
TUNEYARD_TEST_MERGE_DELAY is set, each merged weight waits that many seconds, so a save job
can be caught in the middle of its merge."""

import os
import time

from tuneyard.complete import merge

_merged_weight = merge.merged_weight


def _slow_merged_weight(*args, **kwargs):
    time.sleep(float(os.environ.get("TUNEYARD_TEST_MERGE_DELAY", "0")))
    return _merged_weight(*args, **kwargs)


merge.merged_weight = _slow_merged_weight
