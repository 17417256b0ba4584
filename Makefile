# Finetune Studio. Two commands on a fresh machine:
#   make run    set up (venv, pinned stack, embedded model) and start the dashboard on http://127.0.0.1:7860
#   make test   set up (with test tools) and run the whole test suite
.PHONY: run test test-fast lint bench image

run:
	./scripts/setup.sh
	.venv/bin/python app.py

test:
	./scripts/setup.sh --dev
	n=$${FTS_TEST_PROCESSES:-2}; if [ "$$n" -gt 1 ]; then par="-n $$n --dist loadgroup --no-loadscope-reorder"; fi; \
	.venv/bin/python -m pytest -q --durations=15 $$par

lint:
	./scripts/setup.sh --dev
	.venv/bin/ruff check .
	.venv/bin/lint-imports

test-fast:
	./scripts/setup.sh --dev
	.venv/bin/python -m pytest -q -m "not slow and not browser"

bench:
	./scripts/setup.sh --dev
	.venv/bin/python bench/train_throughput.py

image:
	./scripts/build-image.sh $${FTS_IMAGE:-finetune-studio:latest}
