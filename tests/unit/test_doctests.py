"""Every docstring example in rowcast runs, so the documentation cannot drift from the code
(river does the same in its CI).

Modules are imported under their one import name (``rowcast.…``) and handed to :mod:`doctest`
here, rather than collected with ``--doctest-modules``: pytest would import the layer folders a
second time under their bare names (``core.settings``), registering every metric twice.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

from tests.helpers.modules import all_modules

WITH_EXAMPLES = [m for m in all_modules()
                 if doctest.DocTestFinder().find(importlib.import_module(m))
                 and any(t.examples for t in doctest.DocTestFinder().find(importlib.import_module(m)))]


def test_examples_are_found():
    assert "rowcast.core.settings" in WITH_EXAMPLES
    assert len(WITH_EXAMPLES) >= 10


@pytest.mark.parametrize("module", WITH_EXAMPLES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS,
                             verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module}"
