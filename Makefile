# phonehome-jump — everything a fresh Debian machine needs, then the job.
# `make demo` first, `make test` second (see README.md).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
APT_PKGS := openssh-server openssh-client dropbear-bin busybox zsh iproute2 iptables sudo vim-tiny less procps openssl

.PHONY: setup system venv demo test unit bench lab-up lab-down schema clean

setup: system venv

# The sshd lab needs OpenSSH, dropbear, busybox, zsh, iproute2, iptables (silent drops) and sudo (the shell tests
# also vi, less, top and openssl on the targets); install them when they are missing.
system:
	@missing=""; for c in /usr/sbin/sshd /usr/sbin/dropbear dropbearkey busybox dash zsh ssh ssh-keygen ip ss iptables sudo vi less top openssl; do command -v $$c >/dev/null 2>&1 || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make: run as root to install: $(APT_PKGS)" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi

$(BIN)/python:
	$(PY) -m venv $(VENV)

venv: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[mcp,test]'

demo: setup
	$(BIN)/python tests/lab/demo.py

test: setup
	$(BIN)/python -m pytest -q

unit: venv
	$(BIN)/python -m pytest -q tests/unit

bench: setup
	$(BIN)/python bench/bench.py --markdown

lab-up: setup
	$(BIN)/python tests/lab/sshlab.py up

lab-down:
	$(BIN)/python tests/lab/sshlab.py down

schema: venv
	$(BIN)/python -m phonehome_jump.inventory --schema > inventory/schema.json

clean:
	rm -rf $(VENV) build plugin/*.egg-info .pytest_cache
