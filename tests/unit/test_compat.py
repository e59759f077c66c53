"""paramiko-jump calls paramiko's private SSHClient._auth with keyword arguments; a paramiko
release that renames or drops one (paramiko 5 dropped gss_auth) breaks every chain."""

import inspect

import paramiko
from paramiko_jump import SSHJumpClient


def test_paramiko_accepts_every_keyword_paramiko_jump_passes():
    source = inspect.getsource(SSHJumpClient._auth)
    passed = set(inspect.signature(SSHJumpClient._auth).parameters) - {"self"}
    accepted = set(inspect.signature(paramiko.SSHClient._auth).parameters) - {"self"}
    assert "super()._auth(" in source
    assert passed <= accepted, f"paramiko {paramiko.__version__} lacks {sorted(passed - accepted)}"


def test_paramiko_connect_accepts_what_paramiko_jump_forwards():
    passed = set(inspect.signature(SSHJumpClient.connect).parameters) - {"self"}
    accepted = set(inspect.signature(paramiko.SSHClient.connect).parameters) - {"self"}
    assert passed <= accepted, f"paramiko {paramiko.__version__} lacks {sorted(passed - accepted)}"
