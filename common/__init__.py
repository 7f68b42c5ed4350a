"""The shared core: what every part of the project uses and that imports nothing else of the project.

- ``catalog``: every metric name, type, unit, help text and label set;
- ``families``: metric families built from catalog entries, and one collector that serves them;
- ``units``: byte sizes, Prometheus durations and their formatting;
- ``quoting``: bad input quoted in an error message without reproducing it whole;
- ``fetch``: one bounded HTTP request (a deadline for the whole response, a size cap, the URL in errors);
- ``envflags``: every command-line flag also readable from a ``GPUATTR_*`` environment variable;
- ``tables``: plain-text tables for the terminal.
"""
