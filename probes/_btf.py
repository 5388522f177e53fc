"""A small reader for the kernel's own BTF (``/sys/kernel/btf/vmlinux``).

BTF is how this project asks the *running* kernel what it is instead of
guessing from its version: the value of ``CPUHP_ONLINE`` (config dependent:
236 on the 6.18 host, other values elsewhere), whether ``online_pages`` is a
function an fentry program can attach to, and which type id it has.

Only what those questions need is decoded: the header, the string section,
and the type records (each kind's trailing data is skipped by its declared
size, so an unknown *future* kind stops the scan with a clear error rather
than mis-reading everything after it).  The wire format is the one in
``include/uapi/linux/btf.h`` (Documentation/bpf/btf.rst).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

BTF_MAGIC = 0xEB9F

# struct btf_header: magic u16, version u8, flags u8, hdr_len u32,
# type_off u32, type_len u32, str_off u32, str_len u32 (offsets after hdr_len).
_HEADER = struct.Struct("<HBBIIIII")
# struct btf_type: name_off u32, info u32 (vlen 0-15, kind 24-28, kflag 31), size/type u32.
_TYPE = struct.Struct("<III")

# Kinds (BTF_KIND_*) and the size of the data that follows each btf_type:
# a constant, or per-member bytes times vlen.
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19

_FIXED_EXTRA = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_PER_MEMBER = {KIND_STRUCT: 12, KIND_UNION: 12, KIND_ENUM: 8, KIND_FUNC_PROTO: 8, KIND_DATASEC: 12, KIND_ENUM64: 12}
_NO_EXTRA = {KIND_PTR, KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FLOAT, KIND_TYPE_TAG}
# By kind: the 32-bit words of kind-specific data after each btf_type, as
# (fixed, per member) with fixed + per_member * vlen words in all; None for a
# kind this reader does not know (a future one: its size is unknown, so
# nothing after it can be read).
_EXTRA_WORDS: tuple[tuple[int, int] | None, ...] = tuple(
    (_FIXED_EXTRA.get(k, 0) // 4, _PER_MEMBER.get(k, 0) // 4) if k in _FIXED_EXTRA or k in _PER_MEMBER or k in _NO_EXTRA else None
    for k in range(32)
)
# The kinds looked up by name (the rest are only counted, to keep type ids right).
_NAMED_KINDS = frozenset({KIND_ENUM, KIND_ENUM64, KIND_FUNC})


class BtfError(ValueError):
    """The BTF blob is not what ``include/uapi/linux/btf.h`` describes."""


@dataclass(frozen=True, slots=True)
class BtfType:
    type_id: int
    kind: int
    name: str
    vlen: int
    offset: int  # of the btf_type record inside the type section


class Btf:
    """Types of one BTF blob, decoded lazily by name."""

    def __init__(self, data: bytes, *, origin: str = "BTF") -> None:
        if len(data) < _HEADER.size:
            raise BtfError(f"{origin}: too short for a BTF header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != BTF_MAGIC:
            raise BtfError(f"{origin}: bad magic {magic:#x} (expected {BTF_MAGIC:#x})")
        if version != 1:
            raise BtfError(f"{origin}: unsupported BTF version {version}")
        types_start = hdr_len + type_off
        strings_start = hdr_len + str_off
        if types_start + type_len > len(data) or strings_start + str_len > len(data):
            raise BtfError(f"{origin}: sections run past the end of the data")
        self.origin = origin
        self._data = data
        self._types = memoryview(data)[types_start : types_start + type_len]
        self._strings = data[strings_start : strings_start + str_len]

    @classmethod
    def vmlinux(cls, path: str = VMLINUX_BTF) -> Btf:
        with open(path, "rb") as f:
            return cls(f.read(), origin=path)

    def _string(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        if end < 0:
            raise BtfError(f"{self.origin}: unterminated string at {offset}")
        return self._strings[offset:end].decode("ascii", "replace")

    def _string_offsets(self, name: str) -> list[int]:
        """Every offset in the string section whose string is ``name``: each place ``name`` is
        followed by a NUL, the tail of a longer string too (a name offset may point into one)."""
        needle = name.encode("ascii", "replace") + b"\0"
        strings = self._strings
        found: list[int] = []
        pos = strings.find(needle)
        while pos >= 0:
            found.append(pos)
            pos = strings.find(needle, pos + 1)
        return found

    @cached_property
    def _index(self) -> tuple[dict[tuple[int, int], BtfType], dict[int, int]]:
        """One pass over the type section: the first ENUM, ENUM64 or FUNC per (kind, name offset),
        and every FUNC_PROTO's vlen by type id.

        vmlinux has over 100,000 types and this runs at daemon start, under
        qemu's TCG too (where Python is ~30x slower): names are compared as
        string-section offsets, never decoded here, and nothing else is
        kept."""
        if len(self._types) % 4:
            raise BtfError(f"{self.origin}: type section of {len(self._types)} bytes is not made of 32-bit words")
        # Every BTF record is a whole number of 32-bit words: index words, not bytes.
        # Native order is right: a blob of the other byte order already failed the magic check.
        words = self._types.cast("I")
        end = len(words)
        extra_of = _EXTRA_WORDS
        named: dict[tuple[int, int], BtfType] = {}
        protos: dict[int, int] = {}
        i = 0
        type_id = 1  # id 0 is the implicit "void"
        while i < end:
            if i + 3 > end:
                raise BtfError(f"{self.origin}: type id {type_id} runs past the end of the type section")
            name_off = words[i]
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            extra = extra_of[kind]
            if extra is None:
                raise BtfError(f"{self.origin}: unknown BTF kind {kind} at type id {type_id}")
            if kind == KIND_FUNC_PROTO:
                protos[type_id] = vlen
            elif name_off and kind in _NAMED_KINDS:
                key = (kind, name_off)
                if key not in named:
                    named[key] = BtfType(type_id, kind, "", vlen, 4 * i)
            i += 3 + extra[0] + extra[1] * vlen
            type_id += 1
        return named, protos

    def _named(self, kind: int, name: str) -> BtfType | None:
        named = self._index[0]
        hits = [named[(kind, off)] for off in self._string_offsets(name) if (kind, off) in named]
        if not hits:
            return None
        first = min(hits, key=lambda t: t.type_id)
        return BtfType(first.type_id, first.kind, name, first.vlen, first.offset)

    def func_id(self, name: str) -> int | None:
        """The type id of kernel function ``name`` (what fentry attaches by)."""
        t = self._named(KIND_FUNC, name)
        return t.type_id if t is not None else None

    def func_param_count(self, name: str) -> int | None:
        """How many parameters kernel function ``name`` takes (its FUNC_PROTO's
        vlen): where fexit finds the return value depends on it."""
        t = self._named(KIND_FUNC, name)
        if t is None:
            return None
        proto_id = _TYPE.unpack_from(self._types, t.offset)[2]
        return self._index[1].get(proto_id)

    def enum_values(self, name: str) -> dict[str, int]:
        """The enumerators of ``enum name``; empty when the kernel has no such enum."""
        t = self._named(KIND_ENUM, name) or self._named(KIND_ENUM64, name)
        if t is None:
            return {}
        values: dict[str, int] = {}
        base = t.offset + _TYPE.size
        signed = bool(_TYPE.unpack_from(self._types, t.offset)[1] >> 31)
        for i in range(t.vlen):
            if t.kind == KIND_ENUM:
                name_off, raw = struct.unpack_from("<Ii" if signed else "<II", self._types, base + 8 * i)
                values[self._string(name_off)] = raw
            else:
                name_off, lo, hi = struct.unpack_from("<III", self._types, base + 12 * i)
                value = (hi << 32) | lo
                if signed and value >= 1 << 63:
                    value -= 1 << 64
                values[self._string(name_off)] = value
        return values
