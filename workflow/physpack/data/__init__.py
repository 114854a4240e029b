"""Data: the packed format, conversion, validation, statistics, split and the loader.

``packed`` (the format and its reader/writer), ``manifest`` (the one schema-checked
manifest reader), ``descriptor`` (a packed directory used in place, with declared
units), ``convert``, ``validate`` with ``plausibility``, ``stats``, ``split``,
``progress`` (log lines of long stages), ``loader``, ``synthetic`` (test data).
"""
