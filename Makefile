# Shortcuts for the README's commands (each sets itself up first).
.PHONY: setup demo test

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh
