# gsfs: `make test` is the whole CI (see .ci/run).
.PHONY: setup test lint

setup:
	bash scripts/setup.sh

# exit code 5 ("no tests collected") fails like any other non-zero code, with a clear message
test: setup
	.venv/bin/pytest -q -ra tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): FAILED" >&2; fi; \
	exit $$rc

lint:
	.venv/bin/ruff check gsfs tests
