# pyprobe: `make setup` installs everything (idempotent, as root on Debian), `make test` runs
# the suite, `make run` replays a capture (PCAP=..., default: the embedded sample).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := libpcap-dev nfdump tshark tcpreplay softflowd iproute2 gcc python3-dev pmacct libfixbuf-tools
NFSTREAM := nfstream==6.6.0
PCAP ?= pyprobe/data/sample.pcap
PROTOCOL ?= ipfix
ARGS ?=

.PHONY: setup apt test run bench compare live clean

setup: apt $(VENV)/.installed

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt-get install $$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The compiled modules: each .pxd and the .py beside it (setup.py compiles those with Cython).
COMPILED := $(shell find pyprobe -name '*.pxd') $(patsubst %.pxd,%.py,$(shell find pyprobe -name '*.pxd'))

# Quiet: one line a step (pip -q says only what goes wrong).
$(VENV)/.installed: pyproject.toml setup.py $(COMPILED)
	@test -x $(PY) || { echo "venv: $(VENV)"; python3 -m venv $(VENV); }
	@echo "pip: pip itself"; $(PY) -m pip install -q --upgrade pip
	@echo "pip: pyprobe (editable) and its test tools; Cython compiles the meter (minutes)"; \
		$(PY) -m pip install -q -e '.[test]'
	@echo "pip: nDPI, $(NFSTREAM) without its dependencies (pandas, numpy: pyprobe needs none)"; \
		$(PY) -m pip install -q --no-deps $(NFSTREAM)
	@touch $@

# The suite twice: on the compiled modules, then on the same source run pure (PYPROBE_PURE=1).
test: setup
	$(PY) -m pytest -q
	PYPROBE_PURE=1 $(PY) -m pytest -q

# Replays PCAP into a local nfcapd (IPFIX; PROTOCOL=netflow9 for v9) and prints what it stored.
run: setup
	@set -e; dir=$$(mktemp -d); \
	port=$$($(PY) -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	mkdir $$dir/flows; nfcapd -b 127.0.0.1 -p $$port -w $$dir/flows > $$dir/nfcapd.log 2>&1 & pid=$$!; \
	for i in $$(seq 50); do ss -Huln "sport = :$$port" | grep -q . && break; sleep 0.1; done; \
	$(VENV)/bin/pyprobe replay $(PCAP) --collector 127.0.0.1:$$port,$(PROTOCOL) $(ARGS); \
	kill -TERM $$pid; wait $$pid || true; \
	echo; echo "nfdump -o line:"; nfdump -R $$dir/flows -o line; \
	echo; echo "nDPI application of each record (nfdump -o 'fmt:%sap -> %dap %nbid %nbnam'):"; \
	nfdump -R $$dir/flows -q -o 'fmt:%sap -> %dap %nbid %nbnam'; rm -rf $$dir

bench: setup
	$(PY) benchmarks/replay.py

compare: setup
	$(PY) benchmarks/compare.py

# Lossless live rates on a veth (root: a network namespace), pyprobe beside softflowd.
live: setup
	$(PY) benchmarks/live.py

clean:
	rm -rf $(VENV) build *.egg-info
	find pyprobe -name "*.so" -delete
