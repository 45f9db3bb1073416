"""User-facing errors.

A `UserError` is a mistake the user can fix (bad path, bad config value, corrupt file). The CLI
prints it as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line naming the file and field."""

    exit_code = 2


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class PluginError(UserError):
    pass


class ClusterError(UserError):
    """The cluster could not run the job (a lost node, no room for the workers): one line saying
    what is missing and how to resume. Its own exit status, so wrappers can retry on it."""

    exit_code = 3


class ExportCheckFailed(UserError):
    """An exported model that does not answer as PyTorch does: exit status 3, the report says why."""

    exit_code = 3
