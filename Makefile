# gsfs: `make test` is the whole CI (see .ci/run).
.PHONY: setup test lint mount

MOUNTPOINT ?= /mnt/gsfs

setup:
	bash scripts/setup.sh

# exit code 5 ("no tests collected") fails like any other non-zero code, with a clear message
test: setup
	.venv/bin/pytest -q -ra --durations=25 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): FAILED" >&2; fi; \
	exit $$rc

# set up, then mount the embedded default (one file store) and print where
mount: setup
	mkdir -p $(MOUNTPOINT)
	.venv/bin/gsfs mount $(MOUNTPOINT)

lint:
	.venv/bin/ruff check gsfs tests

bench: setup ; .venv/bin/python -m tests.bench.bench_copy $(BENCH_ARGS)

# gsfs beside boto3, rbd import/export, s3fs and rclone on a Ceph of its own (as root);
# installs the Debian packages s3fs and rclone if missing
bench-stores: setup
	command -v s3fs >/dev/null && command -v rclone >/dev/null || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends s3fs rclone; }
	.venv/bin/python -m tests.bench.bench_stores $(BENCH_ARGS)
