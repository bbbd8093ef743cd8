"""ruleless: command line, settings and process orchestration (`ruleless up`)."""

__version__ = "0.1.0"
