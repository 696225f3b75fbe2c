"""Exception types. Every user-facing error names the input and what was expected."""


class DfnasError(Exception):
    """Base class for errors caused by user input (bad files, configs, arguments)."""


class ConfigError(DfnasError):
    """A configuration key or value is invalid."""


class TeacherError(DfnasError):
    """A teacher model or checkpoint cannot be used."""


class DataError(DfnasError):
    """A dataset is missing, corrupt, or does not match what the stage needs."""


class ArchError(DfnasError):
    """An architecture does not belong to the space it is used with."""
