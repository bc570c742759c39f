# pyvirt: the two commands in the README.
#   make demo   set up, build the guest kit, boot the demo VM on its serial console
#   make test   set up, then run the whole test suite
.PHONY: setup demo test unit bench guests clean

setup:
	@./scripts/setup.sh

guests:
	@$(MAKE) -s -C guests

# The demo guest ends with exit(0) through the debug-exit port: pyvirt's status 1, as QEMU's.
demo: setup
	.venv/bin/pyvirt run --config examples/demo.json || [ $$? -eq 1 ]

test:
	@PYVIRT_TEST_DEPS=1 ./scripts/setup.sh
	.venv/bin/python -m pytest -q tests

unit: setup
	.venv/bin/python -m pytest -q tests/unit

bench: setup
	.venv/bin/python benchmarks/run.py

clean:
	rm -rf guests/build .venv
