"""Ray Train log lines that are noise to a visionkit user, silenced at their source.

Runs in the driver, in each training worker, and (embedded Ray) as every worker process's
setup hook, so that the console shows visionkit's own lines and real warnings only.
"""

from __future__ import annotations

import importlib.util
import logging


def quiet() -> None:
    # Train V2 logs every ray.train.report at INFO under a logger named by its file path,
    # which LoggingConfig's level filter (it matches "ray.train.*" names) does not catch.
    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)
    # Without a dashboard (the embedded Ray starts none) the placement-group cleaner cannot
    # reach the State API and warns every few seconds. It only matters when the controller
    # dies uncleanly, and then the embedded Ray goes down with the driver anyway.
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    # Train V2 asks the autoscaling coordinator for its resources every few seconds, with a
    # short timeout; on a busy small machine the call times out and logs a traceback that says
    # it is "safe to ignore". A fixed-size cluster never needs the request.
    logging.getLogger("ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client").setLevel(
        logging.ERROR)
