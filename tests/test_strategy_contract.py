"""The strategy contract tests, collected from the package (fusebench/strategies/contract_tests.py), where
they ship so that `fusebench check-strategy` runs them from an installed wheel too."""

from fusebench.strategies.contract_tests import (  # noqa: F401 (pytest collects what this module holds)
    TestStrategyContract,
    _one_thread,
    test_metadata_citation_docstring_and_shared_ranges,
    test_registry_has_the_zoo,
)
