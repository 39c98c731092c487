"""Where a sandbox's files live, made as its uid needs them: its workspace (0700, its own)
and the directory that holds a hard link to its proxy's socket (group: its gid). Both are
worked on without following a symbolic link someone may have planted."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from bureau.files import make_dirs
from bureau.launcher.children import LauncherError

LINK_NAME = "proxy.sock"


def key_of(principal: str) -> str:
    return hashlib.sha256(principal.encode()).hexdigest()[:32]


def unreachable(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that others may not pass through."""
    for directory in [*reversed(path.parents), path]:
        try:
            mode = directory.stat().st_mode
        except FileNotFoundError:
            return None  # made here, 0711
        if not mode & 0o001:
            return directory
    return None


def link_socket(principal: str, socket: Path, links: Path, uid: int) -> Path:
    """Put the principal's current proxy socket in its sandbox directory under ``links``,
    reachable by ``uid`` only: group = the sandbox's gid, mode 0660. Worked on through
    descriptors that follow no symbolic link: what is linked is the socket checked."""
    directory = links / key_of(principal)
    make_dirs(links, 0o711)
    make_dirs(directory, 0o710)
    if not stat.S_ISDIR(directory.lstat().st_mode):
        raise LauncherError(f"sandbox for {principal}: {directory} is not a directory")
    os.chown(directory, -1, uid, follow_symlinks=False)
    fd = os.open(socket, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise LauncherError(f"sandbox for {principal}: {socket} is not a socket")
        opened = f"/proc/self/fd/{fd}"  # the inode opened, whatever the path is now
        os.chown(opened, -1, uid)
        Path(opened).chmod(0o660)
        temporary = directory / f".{LINK_NAME}.new"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        # linkat(AT_SYMLINK_FOLLOW) of the magic link: the inode itself. os.link() calls
        # plain link(), which follows nothing, unless given a directory fd.
        procfd = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(str(fd), temporary, src_dir_fd=procfd, follow_symlinks=True)
        finally:
            os.close(procfd)
    finally:
        os.close(fd)
    temporary.rename(directory / LINK_NAME)
    # rename() of a link onto a link of the same socket does nothing, and leaves it.
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    return directory


def prepare_workspace(principal: str, workspaces: Path, uid: int) -> Path:
    """The principal's workspace under ``workspaces``: a directory, 0700, ``uid``'s."""
    path = workspaces / key_of(principal)
    make_dirs(workspaces, 0o711)  # others pass through, see nothing
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise LauncherError(f"sandbox for {principal}: workspace {path} is not a directory")
    if info.st_uid != uid or info.st_gid != uid or info.st_mode & 0o7777 != 0o700:
        # A workload may have changed its own workspace's mode. Without CAP_FOWNER, own the
        # directory for a moment (CAP_CHOWN) to set it right.
        os.chown(path, os.getuid(), -1, follow_symlinks=False)
        path.chmod(0o700)
        os.chown(path, uid, uid, follow_symlinks=False)
    return path
