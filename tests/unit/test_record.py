"""pymta.lib.record: a class's compiled constructor (made after COMPILE_AFTER
instances) builds the same records as the generic one, and refuses the same
mistakes."""

from __future__ import annotations

import pytest

from pymta.lib import record
from pymta.lib.record import REQUIRED, Record


def _kinds():
    class Plain(Record):
        __slots__ = ("a", "b", "items", "table")
        FIELDS = (("a", REQUIRED), ("b", 7), ("items", []), ("table", {}))

    class Child(Plain):
        __slots__ = ("c",)
        FIELDS = (*Plain.FIELDS, ("c", "x"))

    return Plain, Child


def _fields(rec) -> dict:
    return {name: getattr(rec, name) for name, _ in rec.FIELDS}


CALLS = [
    ((1,), {}),
    ((1, 2), {}),
    ((), {"a": 3, "table": {"k": 1}}),
    ((1,), {"items": [5], "b": None}),
]


@pytest.mark.parametrize("args,kw", CALLS)
def test_the_compiled_constructor_builds_what_the_generic_one_does(args, kw):
    Plain, Child = _kinds()
    generic = [Plain(*args, **kw), Child(*args, **kw)]
    for _ in range(record.COMPILE_AFTER):
        Plain(1)
        Child(1)
    assert Plain.__dict__["_fast_init"] and Child.__dict__["_fast_init"]
    assert Plain.__dict__["_fast_init"] is not Child.__dict__["_fast_init"]  # a subclass never takes its base's
    compiled = [Plain(*args, **kw), Child(*args, **kw)]
    for old, new in zip(generic, compiled, strict=True):
        assert type(old) is type(new) and _fields(old) == _fields(new) and old == new
    assert compiled[1].c == "x"


def test_the_compiled_constructor_copies_mutable_defaults_and_refuses_mistakes():
    Plain, _ = _kinds()
    for _ in range(record.COMPILE_AFTER + 1):
        Plain(1)
    one, two = Plain(1), Plain(1)
    one.items.append("x")
    one.table["k"] = 1
    assert two.items == [] and two.table == {}
    with pytest.raises(TypeError, match="needs 'a'"):
        Plain()
    with pytest.raises(TypeError):
        Plain(1, nofield=2)
    with pytest.raises(TypeError):
        Plain(1, 2, [], {}, "too many")
    with pytest.raises(TypeError):
        Plain(1, a=1)
    assert Plain(1).replace(b=9) == Plain(1, 9)


def test_field_names_the_compiled_code_cannot_take_keep_the_generic_constructor():
    class Odd(Record):
        __slots__ = ("self", "_d0")
        FIELDS = (("self", 1), ("_d0", 2))

    for _ in range(record.COMPILE_AFTER + 1):
        made = Odd(5)
    assert Odd.__dict__["_fast_init"] is False and (made.self, made._d0) == (5, 2)
