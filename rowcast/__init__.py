"""rowcast: score every new Postgres row the moment it lands, with online models.

One import name, five layers, each in its own folder at the top of the repository; a layer
imports only the layers below it (``tests/unit/test_layers.py`` fails on an upward import):

==================== ============== ===========================================================
``rowcast.ops``      ``ops/``       the operator surface: CLI, status, dashboard, demo, dev
                                    stack, reconcile, dead-letter tools, pipeline supervision
``rowcast.streams``  ``streams/``   the long-running processes: faust worker, learner, source,
                                    sink loops
``rowcast.connectors`` ``connectors/`` Postgres and Kafka I/O: CDC, sink, registry, checkpoints
``rowcast.models``   ``models/``    pure learning and scoring decisions, no I/O
``rowcast.core``     ``core/``      the foundation: settings, errors, metrics, the records that
                                    cross process boundaries, source positions
==================== ============== ===========================================================
"""

__version__ = "0.1.0"
