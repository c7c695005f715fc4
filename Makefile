# Two commands for a new user: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench reference clean preload bytecode igt

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# the checkout's bytecode, as pip compiles an installed package's: a daemon started
# where PYTHONDONTWRITEBYTECODE is set would otherwise compile xed on every start
# (about 70 ms of the way to READY=1); only files changed since are compiled again
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q protocols xed clients

# the C preload library for `xec run`, built into the cache `xec run` uses
preload: $(STAMP)
	@path=$$($(BIN)/python -m clients.preload) && echo "preload library (xec run): $$path"

demo: $(STAMP) bytecode preload
	$(BIN)/python -m clients.demo
	$(BIN)/xec scenario run dma_buf_ring
	$(BIN)/xec scenario run mmio_isolation
	$(BIN)/xec scenario run unplug_under_load
	@echo
	@echo "What to try next:"
	@echo "  .venv/bin/xed serve --socket /tmp/xed.sock &          a daemon of your own"
	@echo "  XED_SOCKET=/tmp/xed.sock .venv/bin/python             then README: A first program"
	@echo "  .venv/bin/xec run --socket /tmp/xed.sock -- PROGRAM   an unmodified C program"
	@echo "  .venv/bin/xed ctl --socket /tmp/xed.sock clients      who is connected, what they hold"
	@echo "  .venv/bin/xec scenario list                            more scenarios; xec --help for all"
	@echo "  make igt                                               IGT's xe tests against xed"
	@echo "  make bench                                             the speed figures"

# three workers on two cores: most tests wait on real daemons and client processes
# (round trips, timeouts), and with two the cores sat 17% idle. Measured on this 2-core
# VM: -n 2 331-359 s, -n 3 294-317 s, -n 4 344 s (each worker starts its own daemons
# on its own temporary sockets)
test: $(STAMP) lint bytecode preload
	$(BIN)/python -m pytest -n 3

lint: $(STAMP)
	$(BIN)/ruff check protocols xed clients tests
	$(BIN)/mypy

bench: $(STAMP) bytecode
	$(BIN)/xec bench scale
	$(BIN)/xec bench throughput
	$(BIN)/xec bench rtt
	$(BIN)/xec bench stalls
	$(BIN)/xec bench mmap
	$(BIN)/xec bench barrier
	$(BIN)/xec bench rdma

# IGT's xe tests that are xed's yardstick, unmodified (fetched from Debian on first use)
igt: $(STAMP) bytecode preload
	$(BIN)/xec igt run xe_mmap
	$(BIN)/xec igt run xe_prime_self_import

reference: $(STAMP)
	$(BIN)/python -m protocols.reference > protocols/REFERENCE.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
