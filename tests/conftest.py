"""Shared fixtures: the real sshd lab (jump1 → jump2 → targets) and managers over it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "lab"))
from sshlab import Lab  # noqa: E402

from phonehome_jump.inventory import Inventory  # noqa: E402
from phonehome_jump.manager import SessionManager  # noqa: E402


def need_root() -> None:
    """Lab tests need root; under CI that is a failure, elsewhere a skip."""
    if os.geteuid() != 0:
        msg = "the sshd lab needs root (network namespaces, sshd)"
        if os.environ.get("CI"):
            pytest.fail(msg + " and CI is set", pytrace=False)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    need_root()
    lab = Lab(Path(os.environ.get("PHJ_LAB_STATE", "/tmp/phonehome-jump-lab-test")) / os.environ.get("PHJ_LAB_NET", "199"), n_targets=3)
    lab.up()
    saved = {k: os.environ.get(k) for k in lab.env}
    os.environ.update(lab.env)
    yield lab
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    lab.down()


@pytest.fixture(scope="session")
def lab_inventory(lab: Lab) -> Inventory:
    return Inventory.load(lab.inventory)


@pytest.fixture
def manager(lab_inventory: Inventory) -> Iterator[SessionManager]:
    m = SessionManager(lab_inventory)
    yield m
    m.shutdown()


@pytest.fixture(scope="session")
def device_lab(lab: Lab) -> Path:
    """fakenos devices and the scripted device inside target3's namespace; their inventory."""
    return lab.start_devices()


@pytest.fixture
def devices(device_lab: Path) -> Iterator[SessionManager]:
    m = SessionManager(Inventory.load(device_lab))
    yield m
    m.shutdown()
