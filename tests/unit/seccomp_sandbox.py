"""Run a command under the system call rules a warren unit asks systemd for, without systemd: the
units' `SystemCallFilter=` (only the listed calls; the others fail with EPERM, as
`SystemCallErrorNumber=EPERM` says) and `MemoryDenyWriteExecute=yes` (no mapping both writable and
executable, no mprotect to executable), built with libseccomp as systemd builds them.

    python tests/unit/seccomp_sandbox.py ALLOWED_SYSCALLS_FILE PROGRAM ARG...

Filters survive execve, so PROGRAM and everything it starts run under them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ALLOW = 0x7FFF0000  # SCMP_ACT_ALLOW
EPERM = 0x00050000 | 1  # SCMP_ACT_ERRNO(EPERM)
MASKED_EQ = 7  # SCMP_CMP_MASKED_EQ
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000


class ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def libseccomp() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("seccomp")
    if name is None:
        return None
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    return lib


def load_filters(lib: ctypes.CDLL, allowed: list[str]) -> None:
    # MemoryDenyWriteExecute first: once the allow-list is loaded, seccomp() itself is not allowed.
    mdwe = lib.seccomp_init(ALLOW)
    for name, arg, mask in (
        ("mmap", 2, PROT_WRITE | PROT_EXEC),
        ("mprotect", 2, PROT_EXEC),
        ("pkey_mprotect", 2, PROT_EXEC),
        ("shmat", 2, SHM_EXEC),
    ):
        cmp = ArgCmp(arg, MASKED_EQ, mask, mask)
        if lib.seccomp_rule_add_array(
            mdwe, EPERM, lib.seccomp_syscall_resolve_name(name.encode()), 1, ctypes.byref(cmp)
        ):
            raise OSError(f"seccomp rule for {name}")
    if lib.seccomp_load(mdwe):
        raise OSError("loading the MemoryDenyWriteExecute filter")
    only = lib.seccomp_init(EPERM)
    for name in allowed:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number >= 0 and lib.seccomp_rule_add_array(only, ALLOW, number, 0, None) not in (0, -17):  # -EEXIST
            raise OSError(f"seccomp rule for {name}")
    if lib.seccomp_load(only):
        raise OSError("loading the SystemCallFilter filter")


def main() -> None:
    lib = libseccomp()
    if lib is None:
        sys.exit("libseccomp is not installed")
    with open(sys.argv[1]) as listing:
        load_filters(lib, listing.read().split())
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
