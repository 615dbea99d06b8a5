PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# make test's processes (pytest-xdist): tests that share a run stay in one (tests/conftest.py)
TEST_JOBS ?= 2
# The Kubeflow image, in the registry the cluster pulls from: no default on purpose (make image
# and make compile refuse to run without one), e.g. IMAGE=registry.example.com/ml/tfx-image-pipeline:1.0
IMAGE ?=

.DEFAULT_GOAL := help
.PHONY: help setup browser edge run serve serve-app test test-fast bench compile image need-image lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv from requirements.lock, hashes required (glibc wheel repair if needed)

$(STAMP): requirements.lock setup.py tools/manylinux_repair.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# every file pip downloads must match a sha256 of the lock; build tools first (from the
	@# lock too), so the one sdist (pyfarmhash) builds with them instead of unpinned ones
	awk '/^[A-Za-z0-9]/ {keep = /^(pip|setuptools|wheel)==/} keep' requirements.lock \
	  > $(VENV)/build-tools.lock
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(VENV)/build-tools.lock
	$(PY) tools/manylinux_repair.py wheels --lock requirements.lock
	$(PY) -m pip install --quiet --require-hashes --no-build-isolation -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) tools/manylinux_repair.py patch
	touch $(STAMP)

run: setup ## train on the embedded default data (or ARGS="--data-root ...") and push if blessed
	$(PY) -m pipeline.local_runner $(ARGS)

serve: setup edge ## the gateway behind nginx on :8080, as deployed (ARGS="--no-auth" locally)
	$(PY) -m serving.edge --listen 127.0.0.1:8080 -- --serving-dir outputs/serving $(ARGS)

serve-app: setup ## the gateway alone on :8080, no proxy in front (development only)
	$(PY) -m serving --serving-dir outputs/serving $(ARGS)

edge: ## install Debian's nginx for the edge proxy and its tests where apt-get can (else they skip)
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { [ "$$(id -u)" = 0 ] && \
	  command -v apt-get >/dev/null && apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq nginx-light >/dev/null; } || \
	  echo "nginx is not installed: the edge tests will skip"

browser: ## install Debian's Chromium for the browser test where apt-get can (else it skips)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  >/dev/null; } || echo "Chromium is not installed: the browser test will skip"

test: setup browser edge ## run the whole test suite (every tier, TEST_JOBS=2 processes; the 25 slowest tests listed)
	$(PY) -m pytest tests -v -n $(TEST_JOBS) --dist loadscope --no-loadscope-reorder --durations=25 $(ARGS)

test-fast: setup ## run the unit tier only (a few minutes: no pipeline run, KFP or gateway process)
	$(PY) -m pytest tests -m unit --durations=10 $(ARGS)

BENCHES := pipeline data model learning warm-start gateway seams distill dask compare

bench: setup ## run the benchmarks (about 100 min); results in bench/results.md
	$(PY) bench/bench_pipeline.py --out bench/results-pipeline.md
	$(PY) bench/bench_data.py --out bench/results-data.md
	$(PY) bench/bench_model.py --out bench/results-model.md
	$(PY) bench/bench_learning.py --out bench/results-learning.md
	$(PY) bench/bench_warm_start.py --out bench/results-warm-start.md
	$(PY) bench/bench_gateway.py --out bench/results-gateway.md
	$(PY) bench/bench_seams.py --out bench/results-seams.md
	$(PY) bench/bench_distill.py --out bench/results-distill.md
	$(PY) bench/bench_dask.py --out bench/results-dask.md
	$(PY) bench/bench_compare.py --out bench/results-compare.md
	cat $(BENCHES:%=bench/results-%.md) > bench/results.md
	rm $(BENCHES:%=bench/results-%.md)

# The example cluster of kfp/README.md: open-source KFP with its object store (the default pipeline
# root) and the volume of kfp/serving/storage.yaml for the data and the serving dir.
CLUSTER ?= --pipeline-root minio://mlpipeline/v2/artifacts --pvc-name tfx-image-data \
	--pvc-mount-path /mnt/data --data-root /mnt/data/images --spans true \
	--serving-dir /mnt/data/serving
# cpu: schedules on any node; gpu: the Trainer asks for a GPU (kfp/README.md, "GPU nodes")
PROFILE ?= cpu

compile: need-image setup ## compile the Kubeflow package: IMAGE=registry/name:tag (PROFILE=cpu|gpu, CLUSTER, ARGS)
	$(PY) -m pipeline.kubeflow_runner --kfp-image $(IMAGE) --profile $(PROFILE) $(CLUSTER) $(ARGS)

image: need-image ## build the Kubeflow image (needs a Docker engine): IMAGE=registry/name:tag
	docker build -f kfp/Dockerfile -t $(IMAGE) .

need-image:
	@case "$(IMAGE)" in */*:*) ;; *) echo "make $(MAKECMDGOALS): IMAGE='$(IMAGE)' names no \
	registry; set IMAGE=<registry>/<name>:<tag>, the image the cluster pulls" >&2; exit 2;; esac

lock: setup ## re-resolve requirements.in into requirements.lock with hashes (PACKAGE=name: only it)
	$(VENV)/bin/uv pip compile requirements.in --output-file requirements.lock --generate-hashes \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_39 \
	  --no-emit-package tfx-image-pipeline --custom-compile-command "make lock" \
	  $(if $(PACKAGE),--upgrade-package "$(PACKAGE)")

clean: ## remove .venv, outputs/ and caches
	rm -rf $(VENV) outputs .pytest_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
