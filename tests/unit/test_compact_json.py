"""queue.compact_json writes the envelope line as json.dumps would, without importing json."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymta.queue import compact_json

PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@settings(max_examples=500)
@given(PLAIN)
def test_same_text_as_json_dumps(value):
    assert compact_json(value) == json.dumps(value, ensure_ascii=True, separators=(",", ":"))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object(), b"bytes"])
def test_what_json_cannot_hold_is_refused(value):
    with pytest.raises((ValueError, TypeError)):
        compact_json(value)
