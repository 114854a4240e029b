"""Data: the packed format, conversion, validation, statistics, split and the loader."""
