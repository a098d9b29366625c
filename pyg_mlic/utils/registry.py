r"""A small name registry (timm's ``@register_model`` pattern) shared by the backbone,
detection-backend, label-embedding, label-conv and model registries.

>>> from pyg_mlic.utils.registry import Registry
>>> POOLS = Registry("pooling", normalize=str.lower)
>>> @POOLS.register("max")
... def max_pool(x): ...
>>> POOLS.get("Max") is max_pool
True
>>> POOLS.get("mx")
Traceback (most recent call last):
    ...
ValueError: unknown pooling 'mx'; valid: ['max']; did you mean 'max'?

This module imports nothing from the rest of :mod:`pyg_mlic`.
"""
from __future__ import annotations

import difflib
from typing import (Any, Callable, Dict, Generic, Iterator, List, Optional, Sequence, Tuple,
                    TypeVar, overload)

__all__ = ["Registry", "closest"]

T = TypeVar("T")
_MISSING: Any = object()


def closest(name: str, valid: Sequence[str]) -> Optional[str]:
    """The entry of ``valid`` closest to ``name`` (``difflib``), or ``None``: the "did you
    mean" of every unknown-name error (registries, model and training options)."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1)
    return close[0] if close else None


def _describe(obj: Any) -> str:
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{mod}.{qual}" if mod and qual else repr(obj)


class Registry(Generic[T]):
    r"""``name -> object`` in registration order, with one-line errors.

    Args:
        kind (str): what the entries are, for messages (``"backbone"`` gives
            ``unknown backbone 'x'; valid: [...]`` and ``backbone 'x' is already
            registered``).
        normalize (callable, optional): maps a name to its key, at registration and at
            lookup alike (e.g. ``str.lower`` for case-insensitive names).
        identity (callable, optional): maps an entry to what a second registration under
            the same name must be (``is``) to be accepted, when entries wrap the
            registered thing (e.g. ``lambda e: e[0]`` for ``(factory, defaults)``
            tuples). (default: the entry itself)

    Registering a name twice raises unless it is the same object (then the new entry
    replaces the old one, so a re-imported module or a re-run notebook cell is harmless)
    or ``replace=True``. :meth:`get` of an unknown name raises a :class:`ValueError` that
    names the key, the valid ones and the closest match. ``reg[name]`` raises
    :class:`KeyError` like a dict; ``name in reg``, ``len(reg)``, iteration (registration
    order), :meth:`items`, :meth:`values` and :meth:`pop` work as on a dict.
    """

    def __init__(self, kind: str, *, normalize: Optional[Callable[[str], str]] = None,
                 identity: Optional[Callable[[T], Any]] = None) -> None:
        self.kind = kind
        self._normalize = normalize
        self._identity = identity
        self._entries: Dict[str, T] = {}

    # ------------------------------------------------------------------ keys
    def key(self, name: str) -> str:
        """The key ``name`` is stored under (after ``normalize``)."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        return self._normalize(name) if self._normalize is not None else name

    # ------------------------------------------------------------------ registering
    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, replace: bool = False) -> T: ...

    def register(self, name: str, obj: Any = _MISSING, *, replace: bool = False) -> Any:
        """Register ``obj`` under ``name`` and return it; without ``obj``, a decorator
        doing so (``@reg.register("name")``).

        Raises:
            ValueError: ``name`` is empty, or already holds another object (unless
                ``replace``).
        """
        key = self.key(name)
        if not key:
            raise ValueError(f"{self.kind} name must be non-empty (got {name!r})")
        if obj is _MISSING:
            return lambda o: self.register(name, o, replace=replace)
        old = self._entries.get(key, _MISSING)
        if old is not _MISSING and not replace and self._id(old) is not self._id(obj):
            raise ValueError(f"{self.kind} {key!r} is already registered "
                             f"(by {_describe(self._id(old))})")
        self._entries[key] = obj
        return obj

    def _id(self, entry: T) -> Any:
        return self._identity(entry) if self._identity is not None else entry

    def pop(self, name: str, default: Any = _MISSING) -> Any:
        """Remove and return the entry of ``name`` (``default`` when there is none; without
        ``default``, :meth:`get`'s error)."""
        key = self.key(name)
        if key in self._entries:
            return self._entries.pop(key)
        if default is _MISSING:
            raise self.unknown(name)
        return default

    # ------------------------------------------------------------------ lookup
    def get(self, name: str, default: Any = _MISSING) -> T:
        """The entry of ``name``; an unknown name returns ``default`` when given, else
        raises :meth:`unknown`'s :class:`ValueError`."""
        key = self.key(name)
        if key in self._entries:
            return self._entries[key]
        if default is not _MISSING:
            return default
        raise self.unknown(name)

    def unknown(self, name: Any, valid: Optional[Sequence[str]] = None,
                also: str = "") -> ValueError:
        """The error for an unknown ``name`` (returned, for the caller to raise):
        ``unknown <kind> 'x'; valid: [...]<also>; did you mean 'y'?``.

        Args:
            name: the name as the user gave it.
            valid (sequence of str, optional): the names to list and to suggest from.
                (default: :meth:`names`)
            also (str): text appended to the list (e.g. ``" or 'timm:<model name>'"``).
        """
        valid = list(self.names() if valid is None else valid)
        msg = f"unknown {self.kind} {name!r}; valid: {valid}{also}"
        if isinstance(name, str):
            try:
                probe = self.key(name)
            except Exception:  # a normalize that rejects the name: suggest from the raw one
                probe = name
            close = closest(probe, valid) or closest(name, valid)
            if close:
                msg += f"; did you mean {close!r}?"
        return ValueError(msg)

    def names(self, sort: bool = True) -> List[str]:
        """The registered names, sorted (``sort=False``: in registration order)."""
        return sorted(self._entries) if sort else list(self._entries)

    def items(self) -> List[Tuple[str, T]]:
        """``(name, entry)`` pairs in registration order."""
        return list(self._entries.items())

    def values(self) -> List[T]:
        """The entries in registration order."""
        return list(self._entries.values())

    def __getitem__(self, name: str) -> T:
        return self._entries[self.key(name)]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            return self.key(name) in self._entries
        except Exception:  # a normalize that rejects the name: not registered
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names(sort=False)})"
