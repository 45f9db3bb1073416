"""Ray Train callbacks every visionkit run has (they run in the Train controller)."""

from __future__ import annotations

from ray.train import UserCallback


class UserErrorsEndTheRun(UserCallback):
    """A user mistake raised on a worker (training diverged, a value the task refuses, a bad
    file) fails the same way on every restart, so it ends the run at once instead of spending
    ``ray.max_failures`` on it: raised before the controller's failure policy decides, as a
    controller error, which that policy never retries. The driver reports it in one line
    (:func:`visionkit.train.launch._raise_worker_failure`); a lost worker or node still restarts."""

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        from ray.train import ControllerError

        from .launch import _user_error_in

        for error in worker_exceptions.values():
            found = _user_error_in(error)
            if found is not None:
                raise ControllerError(type(found)(str(found)))
