# gsfs: `make test` is the whole CI (see .ci/run).
.PHONY: setup test lint mount

MOUNTPOINT ?= /mnt/gsfs

setup:
	bash scripts/setup.sh

# exit code 5 ("no tests collected") fails like any other non-zero code, with a clear message
test: setup
	.venv/bin/pytest -q -ra tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): FAILED" >&2; fi; \
	exit $$rc

# set up, then mount the embedded default (one file store) and print where
mount: setup
	mkdir -p $(MOUNTPOINT)
	.venv/bin/gsfs mount $(MOUNTPOINT)

lint:
	.venv/bin/ruff check gsfs tests

bench: setup ; .venv/bin/python -m tests.bench.bench_copy $(BENCH_ARGS)
