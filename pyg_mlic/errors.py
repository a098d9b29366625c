"""Exception types raised by pyg_mlic for bad input.

All of them derive from :class:`ValueError` (or :class:`FileNotFoundError`) so that
callers catching the builtin types keep working; the message always names the
offending file, class or argument.
"""


class DatasetError(ValueError):
    """A dataset file (annotation, image, list) is missing, malformed or inconsistent."""


class ClassMismatchError(ValueError):
    """Two class lists (dataset, label graph, embeddings, checkpoint) do not agree."""


class CheckpointError(ValueError):
    """A checkpoint is truncated, foreign (another model / class list) or not loadable."""


def class_mismatch_message(what_a: str, a, what_b: str, b) -> str:
    """Human-readable description of how class list ``a`` differs from ``b``."""
    a, b = list(map(str, a)), list(map(str, b))
    missing = [c for c in a if c not in set(b)]
    extra = [c for c in b if c not in set(a)]
    parts = [f"{what_a} has {len(a)} classes, {what_b} has {len(b)}"]
    if missing:
        parts.append(f"missing from {what_b}: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if extra:
        parts.append(f"not in {what_a}: {extra[:10]}{' ...' if len(extra) > 10 else ''}")
    if not missing and not extra and a != b:
        first = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        parts.append(f"same classes in a different order (first difference at position "
                     f"{first}: {a[first]!r} vs {b[first]!r})")
    return "; ".join(parts)


def check_same_classes(what_a: str, a, what_b: str, b) -> None:
    """Raise :class:`ClassMismatchError` unless ``a`` and ``b`` are the same ordered list."""
    if list(map(str, a)) != list(map(str, b)):
        raise ClassMismatchError(class_mismatch_message(what_a, a, what_b, b))


class OptionError(ValueError):
    """An option (model, training, recipe, CLI) that the receiver does not take."""


def unknown_option_message(owner: str, key: str, valid, kind: str = "option") -> str:
    """``"ml_gcn got an unknown option 'tua'; did you mean 'tau'? valid: ..."``."""
    from pyg_mlic.utils.registry import closest

    valid = sorted(map(str, valid))
    near = closest(str(key), valid)
    hint = f"; did you mean {near!r}?" if near else ""
    return f"{owner} got an unknown {kind} {str(key)!r}{hint} (valid: {', '.join(valid)})"


def check_options(owner: str, given, valid, kind: str = "option") -> None:
    """Raise :class:`OptionError` naming the first key of ``given`` not in ``valid``."""
    valid = set(valid)
    for key in given:
        if key not in valid:
            raise OptionError(unknown_option_message(owner, key, valid, kind))


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or gradient; the message says where (epoch,
    step, learning rates), what to try, and which checkpoint is the last good one."""
