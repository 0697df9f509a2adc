"""The application layer: the ``steerlib`` command line, the compare command's arguments and
presets, the demo, and where data sets are found.

Nothing in the library imports this package; it is built only on the library's public API.
"""
