"""User-facing errors: one line naming what was wrong and what was expected."""


class BnnclError(Exception):
    """An error caused by the user's input (file, argument, data); the CLI prints it on one line."""


class DataError(BnnclError):
    """A dataset path, layout or file is not what a loader expects."""


class ModelFileError(BnnclError):
    """A model or checkpoint file is missing, corrupted or does not match what is expected."""
