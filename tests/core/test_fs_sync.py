"""Where syncfs may stand in for an fsync per file (p2pckpt.fs.sync)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pckpt.fs.sync import TRUSTED_TYPES, fs_type, kernel_version

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
45 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
50 27 0:52 / /mnt/fuse rw,nosuid,nodev,relatime shared:2 - fuse.sshfs host:/x rw
51 27 8:17 / /srv/weird\\040name rw - xfs /dev/sdb1 rw
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
    ("dev", "kind"),
    [
        (os.makedev(254, 0), "ext4"),
        (os.makedev(0, 52), "fuse.sshfs"),
        (os.makedev(8, 17), "xfs"),
        (os.makedev(9, 9), None),
    ],
)
def test_a_devices_filesystem_type_comes_from_mountinfo(
    tmp_path: Path, dev: int, kind: str | None
) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert fs_type(dev, str(info)) == kind


def test_network_and_fuse_filesystems_are_not_trusted() -> None:
    for kind in ("fuse.sshfs", "nfs", "nfs4", "overlay", "cifs", "9p", "fuseblk"):
        assert kind not in TRUSTED_TYPES


def test_an_unreadable_mountinfo_trusts_nothing(tmp_path: Path) -> None:
    assert fs_type(os.makedev(254, 0), str(tmp_path / "missing")) is None
