"""Data: the packed format, conversion, validation, statistics, split and the loader.

``packed_format`` (the format's files, dtypes and units), ``packed_dataset`` (its
reader), ``packed`` (its writer, and the format's names in one import), ``manifest``
(the one schema-checked manifest reader), ``descriptor`` (a packed directory used in
place, with declared units), ``convert`` with ``npz_stream`` (an NPZ's members read
in chunks) and ``padded_input`` (the padded input checked, unpadded and converted),
``validate`` with ``plausibility``, ``stats``, ``split``,
``progress`` (log lines of long stages), ``loader``, ``synthetic`` (test data).
"""
