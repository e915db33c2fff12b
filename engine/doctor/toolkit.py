"""CUDA toolkit discovery (nvcc, CUDA_HOME, install folders) and reading the
GPU architectures compiled into a CUDA binary.

Nothing here imports torch or nvdiffrast: the doctor's parent process must
survive whatever the environment does, so anything that loads CUDA code runs
in a child process (see ``engine.doctor.smoke``).
"""

from __future__ import annotations

import glob
import json
import mmap
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

SEARCH_ENV = "KILN_CUDA_SEARCH_PATHS"
"""os.pathsep-separated folders (glob patterns allowed) that replace the default toolkit search roots."""

_RELEASE_RE = re.compile(r"release\s+(\d+)\.(\d+)")


def parse_release(text: str) -> Optional[str]:
    """'Cuda compilation tools, release 11.8, V11.8.89' -> '11.8'."""
    m = _RELEASE_RE.search(text or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def major_minor(version: Optional[str]) -> Optional[tuple[int, int]]:
    """'12.8' / '12.8.1' / '12' -> (12, 8) / (12, 8) / (12, 0); None when unparsable."""
    if not version:
        return None
    m = re.match(r"\s*(\d+)(?:\.(\d+))?", str(version))
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def same_release(a: Optional[str], b: Optional[str]) -> bool:
    ma, mb = major_minor(a), major_minor(b)
    return ma is not None and ma == mb


def nvcc_release(nvcc: str, timeout: float = 20.0) -> tuple[Optional[str], str]:
    """Run ``nvcc --version``: (release 'X.Y' or None, raw output or error text)."""
    try:
        r = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"`{nvcc} --version` did not answer within {timeout:g} s"
    except OSError as e:
        return None, f"`{nvcc} --version` could not run: {e}"
    out = (r.stdout or "") + (r.stderr or "")
    return parse_release(out), out.strip()


def _release_from_version_files(root: Path) -> Optional[str]:
    vj = root / "version.json"
    if vj.is_file():
        try:
            data = json.loads(vj.read_text())
            v = (data.get("cuda") or data.get("cuda_nvcc") or {}).get("version")
            if v and major_minor(v):
                return "%d.%d" % major_minor(v)
        except (OSError, ValueError, AttributeError):
            pass
    vt = root / "version.txt"
    if vt.is_file():
        try:
            m = re.search(r"CUDA Version\s+(\d+)\.(\d+)", vt.read_text())
            if m:
                return f"{m.group(1)}.{m.group(2)}"
        except OSError:
            pass
    return None


def nvcc_in(root: Path) -> Optional[Path]:
    for name in ("nvcc", "nvcc.exe"):
        p = root / "bin" / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def toolkit_release(root: Path, timeout: float = 20.0) -> Optional[str]:
    """CUDA release of the toolkit installed at ``root`` (which holds bin/nvcc)."""
    nvcc = nvcc_in(root)
    if nvcc is not None:
        rel, _ = nvcc_release(str(nvcc), timeout)
        if rel:
            return rel
    return _release_from_version_files(root) if nvcc is not None else None


def default_search_patterns(env: Mapping[str, str]) -> list[str]:
    pats = ["/usr/local/cuda-*", "/usr/local/cuda", "/opt/cuda*", "/opt/nvidia/cuda*", "/usr/lib/cuda"]
    if env.get("CONDA_PREFIX"):
        pats.append(env["CONDA_PREFIX"])
        pats.append(os.path.join(env["CONDA_PREFIX"], "pkgs", "cuda-toolkit"))
    pats.append(sys.prefix)
    # pip's nvidia-cuda-nvcc-cuXX wheels put a toolkit-shaped folder in site-packages.
    pats.extend(glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "nvidia", "cuda_nvcc")))
    if os.name == "nt":
        pats.append(r"C:\Program Files\NVIDIA GPU Computing Toolkit\CUDA\v*")
    pats.append("/usr")  # distribution packages (nvidia-cuda-toolkit): /usr/bin/nvcc
    return pats


def search_patterns(env: Mapping[str, str]) -> list[str]:
    override = env.get(SEARCH_ENV)
    if override is not None:
        return [p for p in override.split(os.pathsep) if p.strip()]
    return default_search_patterns(env)


@dataclass(frozen=True)
class Toolkit:
    root: str
    release: str


def find_toolkits(env: Mapping[str, str], timeout: float = 20.0) -> list[Toolkit]:
    """Installed CUDA toolkits (folders with bin/nvcc) under the search roots, in search order."""
    seen: set[str] = set()
    found: list[Toolkit] = []
    for pat in search_patterns(env):
        for root in sorted(glob.glob(os.path.expanduser(pat)), reverse=True) or []:
            p = Path(root)
            if not p.is_dir() or nvcc_in(p) is None:
                continue
            real = os.path.realpath(p)
            if real in seen:
                continue
            seen.add(real)
            rel = toolkit_release(p, timeout)
            if rel:
                found.append(Toolkit(str(p), rel))
    return found


def which(name: str, env: Mapping[str, str]) -> Optional[str]:
    return shutil.which(name, path=env.get("PATH", ""))


def export_lines(cuda_home: str) -> str:
    """The shell lines that make ``cuda_home`` the toolkit used by builds (three lines: each sees the previous)."""
    return (
        f"export CUDA_HOME={cuda_home}\n"
        "export PATH=$CUDA_HOME/bin:$PATH\n"
        "export LD_LIBRARY_PATH=$CUDA_HOME/lib64:$LD_LIBRARY_PATH"
    )


# --------------------------------------------------------------------------------------------
# GPU architectures inside a CUDA binary
# --------------------------------------------------------------------------------------------

_FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
_KIND_PTX, _KIND_ELF = 1, 2


@dataclass
class BinaryArchs:
    sass: set[int]  # e.g. {80, 86}: machine code (cubin) for sm_80, sm_86
    ptx: set[int]  # e.g. {90}: PTX for compute_90 (JIT-compiled by the driver on newer GPUs)
    method: str  # how they were found: fatbin, cuobjdump, strings, or "" when not found

    @property
    def found(self) -> bool:
        return bool(self.sass or self.ptx)


def _fatbin_archs(data) -> tuple[set[int], set[int]]:
    """Walk every CUDA fat binary in ``data``: each is a 16-byte header (magic, version,
    header size, payload size) followed by entries whose header holds the kind (1 PTX,
    2 ELF/cubin), its own size, the payload size and, at offset 28, the SM number."""
    sass: set[int] = set()
    ptx: set[int] = set()
    n = len(data)
    i = data.find(_FATBIN_MAGIC)
    while i != -1:
        if i + 16 <= n:
            _, _, hsize, fsize = struct.unpack_from("<IHHQ", data, i)
            p, end = i + hsize, min(i + hsize + fsize, n)
            while hsize >= 16 and p + 32 <= end:
                kind, _, ehs, size = struct.unpack_from("<HHIQ", data, p)
                arch = struct.unpack_from("<I", data, p + 28)[0]
                if ehs < 32 or kind not in (_KIND_PTX, _KIND_ELF):
                    break
                if 10 <= arch <= 200:
                    (ptx if kind == _KIND_PTX else sass).add(arch)
                p += ehs + size
        i = data.find(_FATBIN_MAGIC, i + 4)
    return sass, ptx


def _cuobjdump_archs(path: str, env: Mapping[str, str]) -> tuple[set[int], set[int]]:
    exe = which("cuobjdump", env)
    if not exe and env.get("CUDA_HOME"):
        cand = Path(env["CUDA_HOME"]) / "bin" / "cuobjdump"
        exe = str(cand) if cand.is_file() else None
    if not exe:
        return set(), set()
    sass: set[int] = set()
    ptx: set[int] = set()
    for flag, into in (("--list-elf", sass), ("--list-ptx", ptx)):
        try:
            r = subprocess.run([exe, flag, path], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        for m in re.finditer(r"sm_(\d+)", r.stdout or ""):
            into.add(int(m.group(1)))
    return sass, ptx


def binary_archs(path: str, env: Optional[Mapping[str, str]] = None) -> BinaryArchs:
    """GPU architectures compiled into the shared library at ``path``.

    Order: parse the fat binaries directly; else ``cuobjdump`` if installed; else
    look for 'sm_XY' strings. ``found`` is False when none of these tells.
    """
    env = os.environ if env is None else env
    try:
        with open(path, "rb") as f:
            try:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # empty file
                data = b""
            try:
                sass, ptx = _fatbin_archs(data)
                if sass or ptx:
                    return BinaryArchs(sass, ptx, "fatbin")
                sass, ptx = _cuobjdump_archs(path, env)
                if sass or ptx:
                    return BinaryArchs(sass, ptx, "cuobjdump")
                strs = {int(m.group(1)) for m in re.finditer(rb"\bsm_(\d{2,3})[af]?\b", data)}
                return BinaryArchs(strs, set(), "strings" if strs else "")
            finally:
                if isinstance(data, mmap.mmap):
                    data.close()
    except OSError:
        return BinaryArchs(set(), set(), "")


def parse_arch_list(items: Iterable[str]) -> tuple[set[int], set[int]]:
    """torch.cuda.get_arch_list() style ['sm_80', 'sm_90', 'compute_90'] -> ({80, 90}, {90})."""
    sass: set[int] = set()
    ptx: set[int] = set()
    for it in items or []:
        m = re.match(r"(sm|compute)_(\d+)", str(it))
        if m:
            (sass if m.group(1) == "sm" else ptx).add(int(m.group(2)))
    return sass, ptx


def arch_compatible(cc: tuple[int, int], sass: set[int], ptx: set[int]) -> tuple[str, str]:
    """Can a GPU of compute capability ``cc`` run this code?

    Returns ('sass', 'sm_86') when matching machine code is present (same major,
    minor <= the GPU's), ('ptx', 'compute_80') when only PTX the driver can JIT
    (PTX arch <= the GPU's), ('none', '') otherwise.
    """
    gpu = cc[0] * 10 + cc[1]
    runnable = sorted(a for a in sass if a // 10 == cc[0] and a <= gpu)
    if runnable:
        return "sass", f"sm_{runnable[-1]}"
    jit = sorted(a for a in ptx if a <= gpu)
    if jit:
        return "ptx", f"compute_{jit[-1]}"
    return "none", ""


def fmt_archs(sass: set[int], ptx: set[int]) -> str:
    parts = [f"sm_{a}" for a in sorted(sass)] + [f"compute_{a}" for a in sorted(ptx)]
    return ", ".join(parts) if parts else "none"
