"""Shared helpers of the benchmark scripts: data location, interleaved timing, machine
description, and the one JSON writer every script uses.

The harness contract (checked by :func:`write_results` and by ``run_all.py``):

* every script writes one JSON document with a top-level ``ratios`` block beside its
  other numbers, ``name -> {"value": float, "baseline": str, "candidate": str,
  "meaning": str}`` (build the entries with :func:`speedup`, :func:`time_ratio`,
  :func:`memory_saving`, :func:`memory_ratio`, :func:`score_ratio` or :func:`ratio`);
* every speed or memory claim a script prints is a ratio of two things measured in the
  same run (these machines are noisy: absolute times across runs mean little), and
  appears in that block;
* the JSON carries no path of the machine it ran on (:func:`sanitize`): paths under the
  project become relative, the shared data folder ``$PYG_MLIC_DATA``, the temporary
  folder ``$TMP``, the home folder ``~``, installed packages ``site-packages/...``; any
  other absolute path is cut to its file name.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def data_dir() -> Path:
    """The shared real data (env ``PYG_MLIC_DATA`` overrides ``../shared/data``)."""
    return Path(os.environ.get("PYG_MLIC_DATA", ROOT.parent / "shared" / "data"))


def time_interleaved(fns: Dict[str, Callable[[], object]], repeats: int = 7,
                     warmup: int = 1) -> Dict[str, float]:
    """Median seconds of each function, running one repeat of each in turn so that
    background load hits all of them alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: Dict[str, list] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> Dict[str, object]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor() or "?"}


# ----------------------------------------------------------------------------- ratios
RATIO_FIELDS = ("value", "baseline", "candidate", "meaning")


def ratio(value: float, baseline: str, candidate: str, meaning: str) -> Dict[str, Any]:
    """One entry of a ``ratios`` block: ``value`` compares ``candidate`` with
    ``baseline`` (both measured in the same run) as ``meaning`` says, e.g.
    ``"x faster"``."""
    return {"value": float(value), "baseline": str(baseline), "candidate": str(candidate),
            "meaning": str(meaning)}


def speedup(t_baseline: float, t_candidate: float, baseline: str, candidate: str
            ) -> Dict[str, Any]:
    """``t_baseline / t_candidate``: how many times faster the candidate is."""
    return ratio(t_baseline / t_candidate, baseline, candidate, "x faster")


def time_ratio(t_candidate: float, t_baseline: float, baseline: str, candidate: str
               ) -> Dict[str, Any]:
    """``t_candidate / t_baseline``: the candidate's time in units of the baseline's
    (lower is better; a floor or a goal is usually stated as such a ratio)."""
    return ratio(t_candidate / t_baseline, baseline, candidate,
                 "x the baseline's time (lower is better)")


def memory_saving(m_baseline: float, m_candidate: float, baseline: str, candidate: str
                  ) -> Dict[str, Any]:
    """``m_baseline / m_candidate``: how many times less memory the candidate needs."""
    return ratio(m_baseline / m_candidate, baseline, candidate, "x less memory")


def memory_ratio(m_candidate: float, m_baseline: float, baseline: str, candidate: str
                 ) -> Dict[str, Any]:
    """``m_candidate / m_baseline``: the candidate's memory in units of the baseline's."""
    return ratio(m_candidate / m_baseline, baseline, candidate,
                 "x the baseline's memory (lower is better)")


def score_ratio(s_candidate: float, s_baseline: float, baseline: str, candidate: str,
                metric: str = "mAP", note: str = "") -> Dict[str, Any]:
    """``s_candidate / s_baseline`` of an accuracy figure (higher is better)."""
    return ratio(s_candidate / s_baseline, baseline, candidate,
                 f"x the baseline's {metric} (higher is better){note}")


def check_ratios(ratios: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The ``ratios`` block, validated: every entry has a finite float ``value`` and
    non-empty ``baseline``, ``candidate`` and ``meaning`` strings. Raises
    :class:`ValueError` naming every bad entry."""
    if not isinstance(ratios, Mapping):
        raise ValueError(f"the ratios block must be a mapping, not {type(ratios).__name__}")
    bad: List[str] = []
    for name, r in ratios.items():
        if not isinstance(r, Mapping) or set(RATIO_FIELDS) - set(r):
            bad.append(f"{name!r}: needs the fields {', '.join(RATIO_FIELDS)}")
            continue
        v = r["value"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            bad.append(f"{name!r}: value {v!r} is not a finite number")
        for k in RATIO_FIELDS[1:]:
            if not isinstance(r[k], str) or not r[k].strip():
                bad.append(f"{name!r}: {k} must be a non-empty string")
    if bad:
        raise ValueError("bad ratios block: " + "; ".join(bad))
    return {str(k): {f: (float(r[f]) if f == "value" else r[f]) for f in RATIO_FIELDS}
            for k, r in ratios.items()}


# ----------------------------------------------------------------------------- paths
#: an absolute POSIX path of at least two components, not part of a URL, a relative path
#: or a ``$VAR/...`` / ``~/...`` form: what :func:`sanitize` removes and the report
#: check looks for
ABS_PATH_RE = re.compile(r"(?<![\w.~$/:\\-])/(?:[\w.+@-]+/)+[\w.+@-]*")


def _prefixes() -> List[Tuple[str, str]]:
    """``(absolute prefix, replacement)``, most specific first."""
    key = (os.environ.get("PYG_MLIC_DATA"), os.environ.get("HOME"), tempfile.gettempdir(),
           sys.prefix)
    if _PREFIX_CACHE.get("key") != key:
        _PREFIX_CACHE.update(key=key, pairs=_compute_prefixes())
    return _PREFIX_CACHE["pairs"]


_PREFIX_CACHE: Dict[str, Any] = {}


def _compute_prefixes() -> List[Tuple[str, str]]:
    pairs: List[Tuple[str, str]] = []

    def add(p: Optional[Union[str, Path]], rep: str) -> None:
        if not p:
            return
        for q in {str(p), os.path.realpath(str(p))}:
            q = q.rstrip("/")
            if q and q != "/" and q.startswith("/"):
                pairs.append((q, rep))

    add(ROOT, "")
    add(data_dir(), "$PYG_MLIC_DATA")
    for key in ("purelib", "platlib"):
        add(sysconfig.get_paths().get(key), "site-packages")
    for key in ("stdlib", "platstdlib"):
        add(sysconfig.get_paths().get(key), "stdlib")
    add(sys.prefix, "$PYTHON_PREFIX")
    add(tempfile.gettempdir(), "$TMP")
    add("/tmp", "$TMP")
    add(os.path.expanduser("~"), "~")
    return sorted(set(pairs), key=lambda kv: -len(kv[0]))


def sanitize_text(s: str, extra: Optional[Mapping[str, str]] = None) -> str:
    """``s`` with no absolute path of this machine left (see the module docstring);
    ``extra`` maps further prefixes (e.g. a run's work folder) to their replacement."""
    s = str(s)
    if sys.executable:
        s = re.sub(re.escape(sys.executable) + r"(?![\w.+/-])", "python", s)
    # installed packages, wherever the environment lives
    s = re.sub(r"(?<![\w.~$:-])[~/][^\s\"'`|,;:)\]}<>]*/(site|dist)-packages/", r"\1-packages/", s)
    pairs = [(k.rstrip("/"), v) for k, v in (extra or {}).items()] + _prefixes()
    for prefix, rep in sorted(pairs, key=lambda kv: -len(kv[0])):
        if prefix not in s:
            continue
        pat = re.compile(re.escape(prefix) + r"(/[^\s\"'`|,;)\]}<>]*)?(?![\w.+@-])")

        def sub(m: "re.Match[str]", rep: str = rep) -> str:
            tail = m.group(1) or ""
            if rep == "":
                return tail[1:] or "."
            return rep + tail
        s = pat.sub(sub, s)
    # anything else: keep the file name only
    return ABS_PATH_RE.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or ".", s)


def sanitize(obj: Any, extra: Optional[Mapping[str, str]] = None) -> Any:
    """``obj`` (JSON-like: dicts, lists, strings, numbers) with every string and key
    passed through :func:`sanitize_text`; :class:`~pathlib.Path` values become strings."""
    if isinstance(obj, dict):
        return {sanitize_text(str(k), extra): sanitize(v, extra) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v, extra) for v in obj]
    if isinstance(obj, (str, Path)):
        return sanitize_text(str(obj), extra)
    return obj


def find_absolute_paths(text: str) -> List[str]:
    """The absolute paths left in ``text`` (``[]`` for a clean report)."""
    return ABS_PATH_RE.findall(text)


# ----------------------------------------------------------------------------- writer
def write_results(res: Mapping[str, Any], ratios: Mapping[str, Any],
                  json_path: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """The one JSON writer of the benchmark scripts.

    Returns ``{"ratios": ratios, **res}`` (the block validated by :func:`check_ratios`,
    everything passed through :func:`sanitize`); writes it to ``json_path`` when given
    (``"-"``: standard output). A bad block raises :class:`ValueError` (the script then
    fails, and ``run_all.py`` marks its section failed)."""
    block = check_ratios(ratios)
    out = {"ratios": block, **{k: v for k, v in res.items() if k != "ratios"}}
    out = sanitize(json.loads(json.dumps(out, default=str)))
    if json_path is not None:
        text = json.dumps(out, indent=2) + "\n"
        if str(json_path) == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            p = Path(json_path)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    return out


def format_ratios(ratios: Mapping[str, Mapping[str, Any]]) -> str:
    """The block as aligned text lines (``name  value meaning (candidate vs baseline)``)."""
    if not ratios:
        return ""
    w = max(len(k) for k in ratios)
    return "\n".join(f"  {k:<{w}}  {r['value']:8.3g} {r['meaning']}  "
                     f"({r['candidate']} vs {r['baseline']})" for k, r in ratios.items())
