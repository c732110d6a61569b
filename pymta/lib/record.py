"""A light stand-in for ``@dataclass`` on the daemons' start-up path.

``dataclasses`` imports ``inspect`` (about 10 ms); under inetd every
connection is a new process and pays for it.  A Record declares its fields
once, in order, with defaults; ``list``/``dict`` defaults are copied per
instance.

Subclasses declare their fields as class annotations as well (for type
checkers; with ``from __future__ import annotations`` they cost nothing and,
having no value, do not clash with ``__slots__``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Self

REQUIRED = object()


class Record:
    __slots__ = ()
    FIELDS: tuple[tuple[str, Any], ...] = ()  # ((name, default), ...) in positional order

    def __init__(self, *args: Any, **kw: Any) -> None:
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
