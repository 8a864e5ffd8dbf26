"""secretfs: a FUSE filesystem that shows secrets as files."""

__version__ = "0.1.0"
