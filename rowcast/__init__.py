"""rowcast: score every new Postgres row the moment it lands, with online models.

The operator surface lives here (CLI, settings, dev stack, demo); the data path lives in the
top-level packages ``connectors`` (Postgres and Kafka I/O), ``streams`` (faust wiring) and
``models`` (features, catalog, scoring), which know nothing of this package but its settings.
"""

__version__ = "0.1.0"
