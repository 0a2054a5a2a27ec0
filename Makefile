# The two commands of the README: `make demo` and `make test`. Both install what they need
# (Debian packages when run as root, then a .venv with the project), so they work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: deps demo test bench clean

deps:
	@tools/install-system-deps

$(BIN)/offboard: pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { echo "python3-venv missing: apt-get install python3-venv" >&2; exit 1; }
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

demo: deps $(BIN)/offboard
	$(BIN)/offboard demo

test: deps $(BIN)/offboard
	$(BIN)/python -m pytest

bench: deps $(BIN)/offboard
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
