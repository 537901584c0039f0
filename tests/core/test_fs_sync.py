"""Where syncfs may stand in for an fsync per file (p2pckpt.fs.sync)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pckpt.fs.sync import TRUSTED_TYPES, fs_type, kernel_version

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
45 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
50 27 0:52 / /mnt/fuse rw,nosuid,nodev,relatime shared:2 - fuse.sshfs host:/x rw
51 27 8:17 / /srv/weird\\040name rw - xfs /dev/sdb1 rw
60 27 0:70 / /var/lib/docker/overlay/merged rw - overlay overlay rw,lowerdir=/l
"""


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("6.18.44-fc-v1300", (6, 18)),
        ("5.8.0", (5, 8)),
        ("5.4.0-150-generic", (5, 4)),
        ("4.19.0+", (4, 19)),
        ("5.10rc1", (5, 10)),
        ("weird", (0, 0)),
        ("", (0, 0)),
    ],
)
def test_kernel_versions_are_read_from_the_release(release: str, version: tuple[int, int]) -> None:
    assert kernel_version(release) == version


def test_before_linux_5_8_syncfs_is_not_trusted() -> None:
    assert kernel_version("5.7.19") < (5, 8) <= kernel_version("5.8.1")


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/home/me/x", "ext4"),
        ("/", "ext4"),
        ("/mnt/fuse/a/b", "fuse.sshfs"),  # the longest mount point wins
        ("/mnt/fusebox", "ext4"),  # a prefix of the name is not a parent
        ("/srv/weird name/x", "xfs"),  # mountinfo escapes the space
        ("/var/lib/docker/overlay/merged/f", "overlay"),
        ("/proc/1", "proc"),
    ],
)
def test_a_paths_filesystem_type_comes_from_its_mount_point(
    tmp_path: Path, path: str, kind: str
) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert fs_type(path, str(info)) == kind


def test_network_and_fuse_filesystems_are_not_trusted() -> None:
    for kind in ("fuse.sshfs", "nfs", "nfs4", "overlay", "cifs", "9p", "fuseblk"):
        assert kind not in TRUSTED_TYPES


def test_an_unreadable_mountinfo_trusts_nothing(tmp_path: Path) -> None:
    assert fs_type("/home/me", str(tmp_path / "missing")) is None
