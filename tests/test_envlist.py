"""`scoped_env` / `prepend_env` (bench/core/envlist.py): what a block sets is gone after it, error or not."""

from __future__ import annotations

import os
from contextlib import nullcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusebench.core.envlist import prepend_env, scoped_env

VAR = "FUSEBENCH_TEST_ENVLIST"
values = st.none() | st.text(alphabet="abc:/", min_size=1, max_size=6)


@given(before=values, inside=values, fail=st.booleans())
def test_a_scoped_variable_is_set_in_the_block_and_put_back_after_it(before, inside, fail):
    os.environ.pop(VAR, None)
    if before is not None:
        os.environ[VAR] = before
    try:
        with pytest.raises(RuntimeError) if fail else nullcontext():
            with scoped_env(VAR, inside):
                assert os.environ.get(VAR) == inside
                if fail:
                    raise RuntimeError("the block failed")
        assert os.environ.get(VAR) == before
    finally:
        os.environ.pop(VAR, None)


@given(before=values, items=st.lists(st.text(alphabet="abc/", min_size=1, max_size=4), max_size=3))
def test_prepend_puts_the_items_first_and_restores_the_list(before, items):
    os.environ.pop(VAR, None)
    if before is not None:
        os.environ[VAR] = before
    try:
        with prepend_env(VAR, items):
            want = os.pathsep.join(items + ([before] if before else [])) if items else before
            assert os.environ.get(VAR) == want
        assert os.environ.get(VAR) == before
    finally:
        os.environ.pop(VAR, None)

