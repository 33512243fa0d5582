"""The layout of a queue tree on disk.

::

    <root>/quantd.toml              configuration (written by ``quantd init``)
    <root>/queues/<queue>/          pending items, one JSON file each
    <root>/queues/<queue>/.claims/<holder>/   items claimed by one process
    <root>/queues/completed|failed/ archives
    <root>/output/...               outputs: where finished work lands
    <root>/quarantine/<entry>/      what was not a valid item, with a reason
    <root>/.quantd/tmp/             files still being written
    <root>/.quantd/holders/         one record per claiming process
    <root>/.quantd/recovering/      claims the daemon is returning to pending
    <root>/status.json              written by the daemon

Every directory must sit on the root's file system, because every state
change is a rename.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from quantd.config import (
    CONFIG_FILE_NAME,
    ROOT_ENV,
    Config,
    find_config_path,
    load_config,
    reference_config,
    write_reference_config,
)
from quantd.errors import QueueNotFound, TreeError
from quantd.fsutil import make_dirs

CLAIMS_DIR = ".claims"
INTERNAL_DIR = ".quantd"
STATUS_FILE = "status.json"
_NETWORK_FILESYSTEMS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "ceph",
    "glusterfs",
    "lustre",
    "afs",
    "fuse.sshfs",
    "fuse.glusterfs",
    "fuse.s3fs",
}


class NetworkFilesystemWarning(UserWarning):
    """The tree sits on a network file system."""


@dataclass(frozen=True)
class Tree:
    """A queue tree: its root directory and its configuration."""

    root: Path
    config: Config
    durable: bool

    @property
    def internal(self) -> Path:
        return self.root / INTERNAL_DIR

    @property
    def tmp(self) -> Path:
        return self.internal / "tmp"

    @property
    def holders(self) -> Path:
        return self.internal / "holders"

    @property
    def recovering(self) -> Path:
        return self.internal / "recovering"

    @property
    def quarantine(self) -> Path:
        return self.root / self.config.quarantine

    @property
    def status_path(self) -> Path:
        return self.root / STATUS_FILE

    def queue_dir(self, name: str) -> Path:
        """Return the directory of a queue or output, raising QueueNotFound."""
        path = self.config.queues.get(name) or self.config.outputs.get(name)
        if path is None:
            known = ", ".join(self.config.targets())
            raise QueueNotFound(f"no queue or output named {name!r}; known: {known}")
        return self.root / path

    def archive_dir(self, name: str) -> Path:
        return self.root / self.config.archives[name]

    def claims_dir(self, queue: str) -> Path:
        return self.queue_dir(queue) / CLAIMS_DIR

    def all_dirs(self) -> list[Path]:
        """Return every directory the tree needs."""
        config = self.config
        dirs = [self.root / p for p in config.queues.values()]
        dirs += [self.root / p for p in config.outputs.values()]
        dirs += [self.root / p for p in config.archives.values()]
        dirs += [self.quarantine, self.tmp, self.holders, self.recovering]
        return dirs

    def check(self) -> None:
        """Verify that every directory exists on the root's file system."""
        try:
            root_device = self.root.stat().st_dev
        except FileNotFoundError:
            raise TreeError(
                f"tree root {self.root} not found: create it with "
                f"'quantd init --root {self.root}'"
            ) from None
        for directory in self.all_dirs():
            try:
                device = directory.stat().st_dev
            except FileNotFoundError:
                raise TreeError(
                    f"directory {directory} of tree {self.root} is missing: "
                    f"run 'quantd init --root {self.root}' to create it"
                ) from None
            if device != root_device:
                raise TreeError(
                    f"directory {directory} is on a different file system "
                    f"from the tree root {self.root}: every move is a rename, "
                    "which cannot cross file systems; keep the whole tree on "
                    "one file system"
                )


def filesystem_type(path: Path) -> str | None:
    """Return the file system type of the mount that holds ``path``.

    Reads ``/proc/self/mountinfo``; None where it does not exist.
    """
    try:
        with open("/proc/self/mountinfo") as file:
            lines = file.readlines()
    except OSError:
        return None
    target = str(path.resolve())
    best_mount, best_type = "", None
    for line in lines:
        fields = line.split()
        separator = fields.index("-")
        mount_point = fields[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(
            mount_point.rstrip("/") + "/"
        )
        if inside and len(mount_point) >= len(best_mount):
            best_mount, best_type = mount_point, fields[separator + 1]
    return best_type


def _warn_if_network(root: Path) -> None:
    kind = filesystem_type(root)
    if kind in _NETWORK_FILESYSTEMS:
        warnings.warn(
            f"tree {root} is on a network file system ({kind}): processes on "
            "other hosts cannot be watched and locks and renames are not "
            "dependable there; keep the tree on a local disk",
            NetworkFilesystemWarning,
            stacklevel=3,
        )


def resolve_root(explicit: str | Path | None, config: Config | None = None) -> Path:
    """Find the tree root: ``--root``, then ``$QUANTD_ROOT``, then the
    config's ``tree.root``, then the current directory."""
    if explicit:
        return Path(explicit).absolute()
    from_env = os.environ.get(ROOT_ENV)
    if from_env:
        return Path(from_env).absolute()
    if config is not None and config.root:
        base = config.source.parent if config.source else Path.cwd()
        return (base / config.root).absolute()
    return Path.cwd()


def _load(root: Path | None, config: str | Path | None) -> Config:
    path = find_config_path(config, root)
    return load_config(path) if path else reference_config()


def open_tree(
    root: str | Path | None = None,
    config: str | Path | None = None,
    *,
    durable: bool | None = None,
) -> Tree:
    """Open an existing tree, raising TreeError if it is incomplete.

    ``durable`` overrides the configuration's ``tree.durable``.
    """
    first_guess = resolve_root(root) if root or os.environ.get(ROOT_ENV) else None
    loaded = _load(first_guess or Path.cwd(), config)
    path = resolve_root(root, loaded)
    if first_guess is None and path != Path.cwd():
        loaded = _load(path, config)
    tree = Tree(path, loaded, loaded.durable if durable is None else durable)
    tree.check()
    _warn_if_network(path)
    return tree


def init_tree(
    root: str | Path | None = None, config: str | Path | None = None
) -> tuple[Tree, bool]:
    """Create a tree's directories and, when none exists, its config file.

    Returns the tree and whether a config file was written. An existing
    config file is never overwritten. The root is found as open_tree finds
    it, so a config given by ``config`` or ``$QUANTD_CONFIG`` may set it
    with ``tree.root``.
    """
    explicit = find_config_path(config, None)
    path = resolve_root(root, load_config(explicit) if explicit else None)
    make_dirs(path)
    written = False
    if config is None and find_config_path(None, path) is None:
        written = write_reference_config(path / CONFIG_FILE_NAME)
    loaded = _load(path, config)
    tree = Tree(path, loaded, loaded.durable)
    for directory in tree.all_dirs():
        make_dirs(directory)
    tree.check()
    _warn_if_network(path)
    return tree, written
