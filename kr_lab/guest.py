"""Run a command inside a User-Mode-Linux guest kernel: a kernel with IPVS, dummy, ipip, ... as a process.

The developers' and CI machines run a kernel without IP_VS and dummy interfaces. Debian's
``user-mode-linux`` package ships a 6.1 UML kernel (``/usr/bin/linux.uml``, modules under
``/usr/lib/uml/modules/<version>``) that boots as an ordinary process. ``run_in_guest`` boots it with this
machine's ``/`` as its root file system (hostfs), runs one command as root inside and powers off;
``unavailable_reason`` says why that cannot happen here (tests skip with that text).

How a run goes:
1. The host makes a temporary directory holding the guest's init script and a modprobe wrapper.
2. This file, run as a script (``guest.py sandbox``), unshares a mount and a PID namespace, marks every
   mount of its namespace read-only (``mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)``), mounts a private
   tmpfs for UML's own files (its memory file, pid file and mconsole socket) and forks ``linux.uml`` as
   PID 1 of the new PID namespace, with ``PR_SET_PDEATHSIG``.
3. The init script (``/bin/sh``) mounts proc, sysfs, devpts, tmpfs on /run, /var/tmp, /var/log, /dev/shm
   and /etc/netns, and overlays with a tmpfs upper layer on /etc and /tmp (writable, and still showing the
   host's files: /etc's content, a caller's temporary files), loads the node's kernel modules (this file
   again, ``guest.py modprobe``: the host may have no kmod, so it resolves aliases and dependencies from
   ``modules.alias``/``modules.dep`` itself and calls ``finit_module``; it is also the kernel's
   ``/proc/sys/kernel/modprobe`` for on-demand loads), brings ``lo`` up, cds to ``cwd``, runs the command
   with stdin from /dev/null and stdout/stderr on the console, prints an exit marker with a per-run nonce
   and powers off through sysrq.
4. The host reads the console (UML's stdout) until the marker, the process's end or the timeout.

Invariants:
- nothing on the host can be modified from the guest: hostfs writes with the host process's rights, so the
  guest's own ``ro`` is not enough (guest root may remount it read-write, or mount another hostfs); the
  host-side mounts it sees are read-only, recursively, in a mount namespace of its own. The only writable
  host-side place is the private tmpfs, which dies with the namespace;
- the host keeps nothing: the temporary directory is removed after every run; on a timeout the whole
  process group is killed, and the UML kernel's helper processes die with the PID namespace;
- the exit code comes only from the marker line carrying this run's nonce; a guest that never prints it is
  an error (``GuestError``, with the console), never a success.

Measured on the CI machine kind (2 cores, host kernel 6.18, UML 6.1.176), while other work kept the
load average at 2.5-3.5 (expect the low ends on an idle machine):
- boot to command (``run_in_guest(["true"], ...)``): 3.1-4.9 s; a whole run ends ~0.1 s after the command.
  The parts: the kernel ~1.3 s (0.9 s of it raid6/xor speed benchmarks compiled in, not skippable), loading
  the 94 modules of NODE_MODULES ~1.0 s (~11 ms each), mounts ~0.3 s; with ``modules=()`` boot is ~2.1 s;
- tests/guest/test_guest_kernel.py (one boot running tests/guest/inguest, plus a 1 s aborted boot):
  9.2-13.6 s in total over six runs, the guest run 8.0-12.2 s of it. Inside, Python imports are slow
  (pytest ~1.5 s, pyroute2 ~1.8 s): every file access goes through hostfs and every system call of a guest
  process is a ptrace round trip. The memory a guest touches comes from the host's RAM (a file on a private tmpfs).

Limits of this UML kernel (6.1.176, Debian 12): one CPU; ``CONFIG_NF_TABLES_IPV4/IPV6/INET`` are off, so
iptables-nft and ``nft`` tables of family ip/ip6/inet fail ("Operation not supported"); iptables-legacy,
ipset and conntrack work (also the ``set`` and ``ipvs`` matches); no ``ip_vs_twos``, ``nft_nat``,
``nft_chain_nat``, wireguard. Links tried: dummy, veth, bridge (+br_netfilter), vxlan, ipip, gre, sit,
geneve, ipvlan.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fnmatch
import functools
import os
import resource
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence

UML_BINARY = "/usr/bin/linux.uml"
UML_MODULES_DIR = "/usr/lib/uml/modules"
DEFAULT_MEMORY_MB = 768
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What a node needs, loaded at boot (a name missing from this kernel is reported, not fatal). Anything else
# loads on demand through the kernel's modprobe hook, at the price of one interpreter start in the guest.
NODE_MODULES: tuple[str, ...] = (
    # links
    "ipv6", "dummy", "veth", "bridge", "br_netfilter", "vxlan", "ipip", "macvlan", "tun", "sctp",
    # IPVS and all its schedulers
    "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_sh", "ip_vs_dh", "ip_vs_mh",
    "ip_vs_sed", "ip_vs_nq", "ip_vs_lblc", "ip_vs_lblcr", "ip_vs_fo", "ip_vs_ovf", "ip_vs_twos",
    # conntrack and NAT
    "nf_conntrack", "nf_conntrack_netlink", "nf_nat", "nf_reject_ipv4", "nf_log_syslog",
    "nfnetlink_log", "nfnetlink_queue",
    # iptables (legacy) tables, both families
    "ip_tables", "iptable_filter", "iptable_nat", "iptable_mangle", "iptable_raw",
    "ip6_tables", "ip6table_filter", "ip6table_nat", "ip6table_mangle", "ip6table_raw",
    # nftables (what this kernel has of it) and the compat layer iptables-nft needs
    "nf_tables", "nft_compat", "nft_ct", "nft_chain_nat", "nft_nat", "nft_masq", "nft_redir", "nft_reject",
    # matches and targets kr's rules use
    "xt_comment", "xt_conntrack", "xt_mark", "xt_addrtype", "xt_set", "xt_limit", "xt_statistic",
    "xt_recent", "xt_multiport", "xt_sctp", "xt_physdev", "xt_ipvs", "xt_nat", "xt_MASQUERADE",
    "xt_REDIRECT", "xt_NFLOG", "xt_LOG", "xt_CT", "xt_connmark", "xt_state", "xt_tcpudp", "ipt_REJECT",
    "ip6t_REJECT",
    # ipset and its types
    "ip_set", "ip_set_hash_ip", "ip_set_hash_ipport", "ip_set_hash_ipportip", "ip_set_hash_ipportnet",
    "ip_set_hash_net", "ip_set_hash_netport", "ip_set_hash_netiface", "ip_set_hash_netnet",
    "ip_set_bitmap_port", "ip_set_bitmap_ip", "ip_set_list_set",
)

_BOOT_MODULES = ("overlay",)  # the init script's own needs, loaded before NODE_MODULES


@dataclasses.dataclass(frozen=True, slots=True)
class GuestResult:
    returncode: int  # the command's exit status inside the guest (128+N when killed by signal N)
    output: str  # what the command wrote to stdout/stderr (one console: interleaved, "\n" line ends)
    console: str  # the whole console: UML's and the kernel's messages, the init script's, the command's
    boot_seconds: float  # from starting UML on the host to the command starting in the guest
    seconds: float  # the whole run, power-off included
    missing_modules: tuple[str, ...]  # requested modules this guest kernel does not have


class GuestError(RuntimeError):
    """The guest did not run the command to completion; ``console`` holds what it printed."""

    def __init__(self, message: str, console: str = "") -> None:
        tail = "\n".join(console.splitlines()[-40:])
        super().__init__(f"{message}\n--- guest console (last lines) ---\n{tail}" if console else message)
        self.console = console


class GuestTimeout(GuestError, TimeoutError):
    """The command did not finish within the timeout; the guest was killed."""


class GuestUnavailable(GuestError):
    """A guest cannot be booted on this machine (the message says why)."""


# --- host side -------------------------------------------------------------------------------------------


@functools.cache
def uml_version() -> str | None:
    """The UML kernel's release (``6.1.176``), or None when it is not installed."""
    if not os.access(UML_BINARY, os.X_OK):
        return None
    try:
        out = subprocess.run([UML_BINARY, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.split()[0] if out.split() else None


def unavailable_reason() -> str | None:
    """None when ``run_in_guest`` can boot a guest here; otherwise a plain reason."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return f"the UML guest needs Linux on x86_64 (this is {sys.platform} on {os.uname().machine})"
    if not os.access(UML_BINARY, os.X_OK):
        return "user-mode-linux is not installed (scripts/setup.sh installs it)"
    version = uml_version()
    if version is None:
        return f"{UML_BINARY} --version did not answer"
    if not os.path.isfile(os.path.join(UML_MODULES_DIR, version, "modules.dep")):
        return f"the UML kernel's modules are missing ({UML_MODULES_DIR}/{version}/modules.dep)"
    release = tuple(int(part) for part in os.uname().release.split(".")[:2] if part.isdigit())
    if release < (5, 12):
        return f"the host kernel {os.uname().release} has no mount_setattr (5.12+), which keeps the guest read-only"
    if os.geteuid() != 0:
        return "the UML guest needs root (a private, read-only mount namespace keeps it from writing the host)"
    for tool in ("/bin/sh", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (the guest's init script uses the host's)"
    return None


def run_in_guest(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    memory_mb: int = DEFAULT_MEMORY_MB,
    modules: Iterable[str] = NODE_MODULES,
) -> GuestResult:
    """Boot a UML guest on a read-only view of this machine's ``/``, run ``argv`` as root in ``cwd``, power off.

    Writable in the guest: tmpfs on /run, /var/tmp, /var/log, /dev/shm and /etc/netns, and overlays (the
    host's files below, a tmpfs above) on /etc and /tmp; the rest of ``/`` is read-only. ``cwd`` must exist
    on the host outside the tmpfs mounts. The command's environment is PATH, HOME (on the guest's /tmp),
    LANG, TERM=dumb (the console is a tty, its reader a pipe) and PYTHONDONTWRITEBYTECODE, then ``env``.
    ``modules`` are loaded before the command (missing ones land in ``missing_modules``); others load on
    demand. Raises ``GuestUnavailable``, ``GuestTimeout`` (the guest is killed) or ``GuestError`` (the
    guest stopped without the exit marker; the console is in the message).
    """
    reason = unavailable_reason()
    if reason is not None:
        raise GuestUnavailable(reason)
    if not argv:
        raise ValueError("argv is empty")
    version = uml_version()
    assert version is not None
    nonce = secrets.token_hex(8)
    tmp = tempfile.mkdtemp(prefix="kr-guest-")
    try:
        os.chmod(tmp, 0o755)  # the guest's init runs as root, but keep the directory plainly readable
        scratch = os.path.join(tmp, "uml")
        os.mkdir(scratch, 0o700)
        modprobe = os.path.join(tmp, "modprobe")
        _write(modprobe, _modprobe_wrapper(version), mode=0o755)
        init = os.path.join(tmp, "init")
        _write(init, _init_script(nonce, argv, cwd=cwd, env=env or {}, modprobe=modprobe,
                                  modules=(*_BOOT_MODULES, *modules)), mode=0o755)
        command = [
            _python(), "-I", "-S", os.path.abspath(__file__), "sandbox", scratch, "--", UML_BINARY,
            f"mem={int(memory_mb)}M", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro",
            f"init={init}", "con0=null,fd:1", "con=null", "ssl=null", "quiet", f"uml_dir={scratch}",
            f"umid=kr-{nonce}",
        ]
        return _boot(command, nonce, cwd=tmp, timeout=timeout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _python() -> str:
    """An interpreter path the guest can execute too (the guest sees the host's files)."""
    return os.path.realpath(sys.executable)


def _write(path: str, text: str, mode: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)


def _modprobe_wrapper(version: str) -> str:
    here = shlex.quote(os.path.abspath(__file__))
    return (f"#!/bin/sh\n# kr guest: the kernel's modprobe helper (kmod may be absent on the host)\n"
            f"exec {shlex.quote(_python())} -I -S {here} modprobe --version {shlex.quote(version)} \"$@\"\n")


def _init_script(nonce: str, argv: Sequence[str], *, cwd: str, env: Mapping[str, str], modprobe: str,
                 modules: Sequence[str]) -> str:
    marker = f"KR-GUEST-{nonce}"
    exports = "".join(f"export {_env_name(k)}={shlex.quote(v)}\n" for k, v in env.items())
    return f"""#!/bin/sh
# kr guest init (generated by kr_lab.guest): mount what a node writes, load modules, run one command.
export PATH={shlex.quote(GUEST_PATH)}
umask 022
fail() {{ echo "{marker}-FAILED $*"; echo o > /proc/sysrq-trigger; while :; do sleep 1; done; }}
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mkdir -p /dev/pts /dev/shm 2>/dev/null
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts || fail "mount /dev/pts"
mount -t tmpfs -o mode=755 tmpfs /run || fail "mount tmpfs on /run"
echo {shlex.quote(modprobe)} > /proc/sys/kernel/modprobe
missing=$({shlex.quote(modprobe)} --boot {" ".join(shlex.quote(m) for m in modules)}) || fail "modprobe: $missing"
echo "{marker}-MISSING $missing"
overlay() {{  # the host's directory, writable: its changes go to a tmpfs upper layer
  layers=/run/kr-guest/overlay$1
  mkdir -p "$layers/upper" "$layers/work" &&
  mount -t overlay overlay -o "lowerdir=$1,upperdir=$layers/upper,workdir=$layers/work" "$1"
}}
for dir in /etc /tmp; do overlay $dir || fail "overlay on $dir"; done
for dir in /var/tmp /var/log /dev/shm; do
  mount -t tmpfs -o mode=1777 tmpfs "$dir" || fail "mount tmpfs on $dir"
done
[ -L /var/run ] || mount -t tmpfs -o mode=755 tmpfs /var/run || fail "mount tmpfs on /var/run"
mkdir -p /etc/netns /tmp/home && mount -t tmpfs -o mode=755 tmpfs /etc/netns || fail "tmpfs on /etc/netns"
ip link set lo up || fail "lo up"
cd {shlex.quote(cwd)} || fail "cd {shlex.quote(cwd)}"
export HOME=/tmp/home LANG=C.UTF-8 TERM=dumb PYTHONDONTWRITEBYTECODE=1
{exports}echo "{marker}-BEGIN"
{" ".join(shlex.quote(a) for a in argv)} </dev/null 2>&1
rc=$?
echo "{marker}-EXIT $rc"
echo o > /proc/sysrq-trigger
while :; do sleep 1; done
"""


def _env_name(name: str) -> str:
    if not name.isidentifier() or not name.isascii():
        raise ValueError(f"not a usable environment variable name: {name!r}")
    return name


def _boot(command: list[str], nonce: str, *, cwd: str, timeout: float) -> GuestResult:
    begin, exit_prefix = f"KR-GUEST-{nonce}-BEGIN".encode(), f"KR-GUEST-{nonce}-EXIT ".encode()
    started = time.monotonic()
    deadline = started + timeout
    proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    console = bytearray()
    scanned = 0  # console[:scanned] holds only complete lines already looked at
    boot_seconds: float | None = None
    panicked = False
    try:
        fd = proc.stdout.fileno()
        finished = False
        while not finished:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and panicked:
                break
            if remaining <= 0:
                _kill(proc)
                raise GuestTimeout(f"the guest command did not finish within {timeout:g} s", _text(bytes(console)))
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            console += data
            end = console.rfind(b"\n") + 1
            for line in bytes(console[scanned:end]).splitlines():
                line = line.rstrip(b"\r")
                if boot_seconds is None and line == begin:
                    boot_seconds = time.monotonic() - started
                elif boot_seconds is not None and line.startswith(exit_prefix):
                    finished = True  # UML powers off by itself; give it a moment below
                elif line.startswith(b"Kernel panic - not syncing") and not panicked:
                    panicked = True  # a panicked UML hangs instead of exiting: read its trace for a second
                    deadline = min(deadline, time.monotonic() + 1.0)
            scanned = max(scanned, end)
        try:
            proc.wait(timeout=0 if panicked else max(1.0, min(10.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            _kill(proc)
    finally:
        if proc.poll() is None:
            _kill(proc)
        proc.stdout.close()
    seconds = time.monotonic() - started
    if panicked:
        raise GuestError("the guest kernel panicked", _text(bytes(console)))
    return _parse(_text(bytes(console)), f"KR-GUEST-{nonce}", boot_seconds or seconds, seconds)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Stop the guest: the sandbox helper kills UML and reaps it on SIGTERM (UML's helper processes die
    with its PID namespace); anything still alive after that gets SIGKILL, the whole process group."""
    try:
        proc.terminate()
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")


def _parse(console: str, marker: str, boot_seconds: float, seconds: float) -> GuestResult:
    lines = console.split("\n")
    failed = [line for line in lines if line.startswith(f"{marker}-FAILED")]
    if failed:
        raise GuestError(f"the guest's init failed: {failed[0].removeprefix(f'{marker}-FAILED ').strip()}", console)
    try:
        begin = lines.index(f"{marker}-BEGIN")
    except ValueError:
        raise GuestError("the guest never started the command", console) from None
    exits = [i for i, line in enumerate(lines) if line.startswith(f"{marker}-EXIT ") and i > begin]
    if not exits:
        raise GuestError("the guest stopped before the command finished", console)
    returncode = int(lines[exits[-1]].split()[-1])
    missing = next((line.removeprefix(f"{marker}-MISSING").split() for line in lines
                    if line.startswith(f"{marker}-MISSING")), [])
    output = "".join(f"{line}\n" for line in lines[begin + 1:exits[-1]])
    return GuestResult(returncode=returncode, output=output, console=console, boot_seconds=boot_seconds,
                       seconds=seconds, missing_modules=tuple(missing))


# --- the sandbox: run on the host as `guest.py sandbox SCRATCH -- UML ARGS...` (stdlib only) -------------

_CLONE_NEWNS = 0x00020000
_CLONE_NEWPID = 0x20000000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
_SYS_MOUNT_SETATTR = 442  # x86_64
_PR_SET_PDEATHSIG = 1


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _sandbox(scratch: str, uml_argv: list[str]) -> int:
    """Unshare, make every mount read-only, give UML a private tmpfs, run it as PID 1 and wait for it."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    check(libc.unshare(_CLONE_NEWNS | _CLONE_NEWPID), "unshare(mount, pid)")
    check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    attr = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    check(libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, b"/", _AT_RECURSIVE, ctypes.byref(attr),
                       ctypes.sizeof(attr)), "mount_setattr(/, recursive read-only)")
    check(libc.mount(b"kr-guest", scratch.encode(), b"tmpfs", 0, b"mode=0700"), f"tmpfs on {scratch}")
    pid = os.fork()
    if pid == 0:  # PID 1 of the new namespace: when it dies, the kernel kills UML's helper processes too
        try:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # UML aborts on some errors: no core files
            os.environ["TMPDIR"] = scratch  # UML's memory file
            os.execv(uml_argv[0], uml_argv)
        finally:
            os._exit(127)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: os.kill(pid, signal.SIGKILL))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


# --- the guest's modprobe: `guest.py modprobe --version V [--boot] [-q] [--] NAME...` (stdlib only) -----

_MODULE_INIT_IGNORE = 0


class _Modules:
    """The UML kernel's module index: dependencies, aliases and built-ins, as kmod reads them."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.deps: dict[str, list[str]] = {}  # module name -> [its path, then its dependencies' paths]
        with open(os.path.join(root, "modules.dep"), encoding="utf-8") as f:
            for line in f:
                path, _, rest = line.partition(":")
                self.deps[_module_name(path)] = [path, *rest.split()]
        self.builtin: set[str] = set()
        with open(os.path.join(root, "modules.builtin"), encoding="utf-8") as f:
            self.builtin = {_module_name(line.strip()) for line in f if line.strip()}
        self.aliases: list[tuple[str, str]] = []
        with open(os.path.join(root, "modules.alias"), encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "alias":
                    self.aliases.append((parts[1], _module_name(parts[2])))

    def resolve(self, name: str) -> list[str]:
        """Module names ``name`` stands for (itself, or what its alias matches); empty when unknown."""
        module = _module_name(name)
        if module in self.deps or module in self.builtin:
            return [module]
        return sorted({target for pattern, target in self.aliases if fnmatch.fnmatchcase(name, pattern)})

    def load_order(self, module: str) -> list[str]:
        """Paths to load for ``module``, dependencies first (modules.dep lists them nearest first)."""
        if module in self.builtin:
            return []
        path, *deps = self.deps[module]
        return [*reversed(deps), path]


def _module_name(path_or_name: str) -> str:
    base = os.path.basename(path_or_name)
    for suffix in (".ko", ".ko.xz", ".ko.gz", ".ko.zst"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def _loaded() -> set[str]:
    try:
        with open("/proc/modules", encoding="utf-8") as f:
            return {line.split()[0] for line in f}
    except OSError:
        return set()


def _modprobe(version: str, names: list[str], boot: bool) -> int:
    """Load ``names`` and their dependencies. ``--boot`` prints the missing ones and fails only on errors."""
    libc = ctypes.CDLL(None, use_errno=True)
    index = _Modules(os.path.join(UML_MODULES_DIR, version))
    loaded = _loaded()
    missing: list[str] = []
    errors: list[str] = []
    for name in names:
        modules = index.resolve(name)
        if not modules:
            missing.append(name)
            continue
        for module in modules:
            for path in index.load_order(module):
                if _module_name(path) in loaded:
                    continue
                fd = os.open(os.path.join(index.root, path), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if libc.syscall(313, fd, b"", _MODULE_INIT_IGNORE) != 0:  # finit_module
                        err = ctypes.get_errno()
                        if err != 17:  # EEXIST: loaded meanwhile
                            errors.append(f"{path}: {os.strerror(err)}")
                            break
                finally:
                    os.close(fd)
                loaded.add(_module_name(path))
    if boot:
        print(" ".join(missing))
    if errors:
        print("; ".join(errors), file=sys.stderr if not boot else sys.stdout)
        return 1
    return 0 if boot or not missing else 1


def _main(argv: list[str]) -> int:
    if argv[:1] == ["sandbox"] and len(argv) > 3 and argv[2] == "--":
        return _sandbox(argv[1], argv[3:])
    if argv[:1] == ["modprobe"] and len(argv) > 2 and argv[1] == "--version":
        options = argv[3:]
        names = [a for a in options if not a.startswith("-")]
        return _modprobe(argv[2], names, boot="--boot" in options)
    print(f"usage: {os.path.basename(__file__)} sandbox SCRATCH -- UML ARGS... | "
          "modprobe --version V [--boot] [-q] [--] NAME...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
