"""A light stand-in for ``@dataclass`` on the daemons' start-up path.

``dataclasses`` imports ``inspect`` (about 10 ms); under inetd every
connection is a new process and pays for it.  A Record declares its fields
once, in order, with defaults; ``list``/``dict`` defaults are copied per
instance.

Subclasses declare their fields as class annotations as well (for type
checkers; with ``from __future__ import annotations`` they cost nothing and,
having no value, do not clash with ``__slots__``).

The generic ``__init__`` walks the fields in Python: 2-5 us a record, and a
listening smtpd makes about nine per message (8 % of its Python time).
So a class's ``COMPILE_AFTER``-th instance compiles a constructor of its
own, straight-line code with the fields as parameters (0.3-0.6 us); a
process that makes few records (an inetd session) never pays the compile.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Self

REQUIRED = object()
_MISSING = object()
COMPILE_AFTER = 32  # instances made the generic way before a class gets its own constructor


class Record:
    __slots__ = ()
    FIELDS: tuple[tuple[str, Any], ...] = ()  # ((name, default), ...) in positional order

    def __init__(self, *args: Any, **kw: Any) -> None:
        cls = type(self)
        fast = cls.__dict__.get("_fast_init")  # the class's own, never a base class's
        if fast:
            fast(self, *args, **kw)
            return
        if fast is None:  # not compiled yet (False: it cannot be)
            made = cls.__dict__.get("_made", 0) + 1
            cls._made = made  # type: ignore[attr-defined]
            if made >= COMPILE_AFTER:
                cls._fast_init = _compile_init(cls) or False  # type: ignore[attr-defined]
        fields = self.FIELDS
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(fields)} positional arguments")
        for (name, _default), value in zip(fields, args, strict=False):
            if name in kw:
                raise TypeError(f"{type(self).__name__} got {name!r} twice")
            kw[name] = value
        for name, default in fields:
            if name in kw:
                value = kw.pop(name)
            elif default is REQUIRED:
                raise TypeError(f"{type(self).__name__} needs {name!r}")
            elif isinstance(default, (list, dict, set)):
                value = type(default)(default)
            else:
                value = default
            object.__setattr__(self, name, value)
        if kw:
            raise TypeError(f"{type(self).__name__} has no field {next(iter(kw))!r}")

    def replace(self, **changes: Any) -> Self:
        values = {name: getattr(self, name) for name, _ in self.FIELDS}
        values.update(changes)
        return type(self)(**values)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n, _ in self.FIELDS)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n, _ in self.FIELDS)
        return f"{type(self).__name__}({inner})"


def _compile_init(cls) -> Any:
    """The constructor ``Record.__init__`` would be for ``cls``, as straight-line
    code: same parameters (positional in field order, or by name), same
    defaults (list/dict/set ones copied), REQUIRED ones checked.  None when a
    field name cannot be a parameter, or could clash with ``self`` or the
    code's own ``_`` names (the generic one then goes on)."""
    import keyword  # noqa: PLC0415 lazy (only in a process that makes many records)

    names = [name for name, _ in cls.FIELDS]
    if len(set(names)) != len(names) or not all(
        n.isidentifier() and not keyword.iskeyword(n) and n != "self" and not n.startswith("_") for n in names
    ):
        return None
    env: dict[str, Any] = {"_set": object.__setattr__, "_M": _MISSING, "_E": TypeError}
    body = []
    for i, (name, default) in enumerate(cls.FIELDS):
        env[f"_d{i}"] = default
        if default is REQUIRED:
            body.append(f"    if {name} is _M: raise _E({cls.__name__ + ' needs ' + repr(name)!r})")
        elif isinstance(default, (list, dict, set)):
            env[f"_t{i}"] = type(default)
            body.append(f"    if {name} is _M: {name} = _t{i}(_d{i})")
        else:
            body.append(f"    if {name} is _M: {name} = _d{i}")
        body.append(f"    _set(self, {name!r}, {name})")
    params = "".join(f", {name}=_M" for name in names)
    source = f"def __init__(self{params}):\n" + ("\n".join(body) or "    pass") + "\n"
    exec(source, env)  # noqa: S102  (our own field names, checked above)
    return env["__init__"]
