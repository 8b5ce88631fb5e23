# moslora: set-up, build, tests and the demo. Everything installs itself into the project:
# a virtual environment in .venv (the PyPI torch wheel that libtorch is taken from, and the
# Python reference packages the tests compare against) and the Rust build in target/.

PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
FIXTURES   := target/fixtures
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# The reference fixtures and the bench run libtorch/PyTorch on 2 cores, both sides on the same
# thread count; the test run itself uses one thread a lane (see `test`). (It is a cap for
# moslora's command line: `threads: auto` runs the tiny test models and the toy model on one
# thread, within every test's tolerance; docs/benchmarks.md, "Threads".)
export OMP_NUM_THREADS ?= 2
# Idle OpenMP threads sleep instead of spinning (libgomp reads this once, when it loads): the
# test processes, the Python references and the neighbours share the cores. The moslora
# command line sets it for itself whenever it runs more than one thread.
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

# Pinned: parity is defined against these exact versions.
TORCH_PKG := torch==2.11.0
# The rater page's browser test drives Debian's chromium through chromedriver with selenium
# (4.51.0: 4.52.0 requires a certifi release the registry does not have yet).
SELENIUM  := selenium==4.51.0
# The Kubernetes API's models in the official client: the sweep's Job manifest is checked
# against them (tests/reference/check_k8s_job.py).
KUBERNETES := kubernetes==37.0.2
# TensorBoard's own reader checks the event files a run writes (tests/tensorboard.rs), and is
# how people open them: `tensorboard --logdir OUT/tb`.
TENSORBOARD := tensorboard==2.21.0
REF_PKGS  := diffusers==0.42.1 transformers==5.23.0 peft==0.21.2 safetensors==0.8.0 \
             accelerate==1.15.0 numpy pillow $(SELENIUM) $(KUBERNETES) \
             $(PILLOW_HEIF) $(TENSORBOARD)
# Only the CLIP BPE merges file is needed from open-clip; its own dependencies are not.
OPENCLIP  := open-clip-torch==3.3.0
# torchvision (the release made for torch 2.11) for the photo references: diffusers' DreamBooth
# preprocessing uses its transforms. Without dependencies, so the pinned torch stays.
TORCHVISION := torchvision==0.26.0
# HEIC photos: the build links Debian's libheif (1.15 on bookworm, hence libheif-rs 0.20 in
# Cargo.toml); pillow-heif (its own libheif) makes the HEIC test's photos and decodes them as
# the reference.
LIBHEIF_DEB := libheif-dev
PILLOW_HEIF := pillow-heif==1.9.0

BIN := target/release/moslora

.PHONY: all build install test demo bench fixtures venv clean fmt clippy lint browser toy-model toy-bench

all: build

$(VENV)/.torch:
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PKG)
	touch $@

$(VENV)/.reference: $(VENV)/.torch
	$(PY) -m pip install --quiet $(REF_PKGS)
	$(PY) -m pip install --quiet --no-deps $(OPENCLIP)
	touch $@

$(VENV)/.torchvision: $(VENV)/.reference
	$(PY) -m pip install --quiet --no-deps $(TORCHVISION)
	touch $@

venv: $(VENV)/.reference $(VENV)/.torchvision

# libheif for HEIC photos, installed with apt-get when missing (CI runs as root on a fresh
# Debian machine): every cargo build links it.
$(VENV)/.libheif: $(VENV)/.torch
	dpkg -s $(LIBHEIF_DEB) >/dev/null 2>&1 || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(LIBHEIF_DEB))
	touch $@

# Dependencies that need neither the torch wheel nor libheif: on a fresh machine they compile
# while the wheel (about 4 GB with its CUDA libraries) downloads and apt installs libheif.
# (Checked: the full build that follows finds them built, same features.)
EARLY_CRATES := tokenizers rusqlite image imageproc plotters axum tokio hf-hub clap zip \
                serde_yaml ab_glyph

build:
	@if [ ! -f $(VENV)/.torch ] || [ ! -f $(VENV)/.libheif ]; then \
		$(MAKE) --no-print-directory $(VENV)/.torch $(VENV)/.libheif & setup=$$!; \
		cargo build --release $(addprefix -p ,$(EARLY_CRATES)) || true; \
		wait $$setup || exit 1; \
	fi
	cargo build --release

# `moslora` on the PATH, running from any folder without this clone: the binary in
# $(PREFIX)/bin, libtorch and the CUDA libraries it loads in $(PREFIX)/lib/moslora (about 3.6 GB,
# copied from the torch wheel), the toy model, judge and templates in $(PREFIX)/share/moslora.
PREFIX ?= $(HOME)/.local
install: build
	tools/install.sh $(BIN) $(PREFIX)

# Fixtures: a tiny random SDXL pipeline saved by diffusers, the real CLIP vocabulary, and
# reference outputs, all cached under target/ and remade when a script changes.
REF_SCRIPTS := $(wildcard tests/reference/*.py)
$(FIXTURES)/.stamp: $(VENV)/.reference $(VENV)/.torchvision $(REF_SCRIPTS) $(wildcard configs/tiny/*/*.json)
	mkdir -p $(FIXTURES)
	$(PY) tests/reference/make_fixtures.py $(FIXTURES)
	$(PY) tests/reference/make_metric_fixtures.py $(FIXTURES)
	touch $@

fixtures: $(FIXTURES)/.stamp

# Chromium for the rater page's test: installed with apt-get when missing (CI runs as root on
# a fresh Debian machine); selenium also for a .venv made before it joined REF_PKGS.
$(VENV)/.browser: $(VENV)/.reference
	test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)
	$(PY) -m pip install --quiet $(SELENIUM)
	touch $@

browser: $(VENV)/.browser

# pillow-heif, also for a .venv made before it joined REF_PKGS.
$(VENV)/.heif-ref: $(VENV)/.reference
	$(PY) -m pip install --quiet $(PILLOW_HEIF)
	touch $@

# The Kubernetes client, also for a .venv made before it joined REF_PKGS.
$(VENV)/.k8s: $(VENV)/.reference
	$(PY) -m pip install --quiet $(KUBERNETES)
	touch $@

# TensorBoard, also for a .venv made before it joined REF_PKGS.
$(VENV)/.tensorboard: $(VENV)/.reference
	$(PY) -m pip install --quiet $(TENSORBOARD)
	touch $@

# The house stays clean: the layer check (no import up a layer, no loop between modules),
# formatting and clippy (every target, warnings as errors) run first.
lint: $(VENV)/.torch $(VENV)/.libheif
	$(PYTHON_SYS) tools/layers.py
	cargo fmt --all --check
	cargo clippy --release --all-targets -- -D warnings

# The lint runs first; the fixtures (Python) are made while clippy and the test binaries
# compile, which leave a core idle much of the time on a fresh build. The test binaries then
# run side by side, one per core (tools/test_lanes.py), each test on one libtorch thread: the
# tiny and toy models run fastest so (the command line's `threads: auto` picks one thread for
# them too), and one thread per lane never oversubscribes the cores (docs/benchmarks.md).
test: $(VENV)/.reference $(VENV)/.torchvision $(VENV)/.browser $(VENV)/.k8s $(VENV)/.heif-ref \
      $(VENV)/.tensorboard $(VENV)/.libheif
	$(PYTHON_SYS) tools/layers.py
	cargo fmt --all --check
	@$(MAKE) --no-print-directory fixtures & fixtures=$$!; \
		cargo clippy --release --all-targets -- -D warnings && cargo test --release --no-run; \
		built=$$?; wait $$fixtures && exit $$built
	MOSLORA_FIXTURES=$(CURDIR)/$(FIXTURES) OMP_NUM_THREADS=1 \
		$(PYTHON_SYS) tools/test_lanes.py -- --test-threads=1
	cargo test --release --doc

# The whole job on the toy world's pretrained model (assets/toy-model): train LoRA and MoSLoRA
# on the bundled robot (500 steps each), render the comparison in the world's scenes, score it
# with the world's judge (assets/toy-judge), build the blind study kit. Results in target/demo/.
demo: build
	$(BIN) demo --out target/demo

# The toy world's base model and judge, from scratch (see README for the time on 2 cores;
# re-running resumes). `assets/toy-model` and `assets/toy-judge` are this target's output.
toy-model: build
	$(BIN) pretrain --out target/toy/toy-model --dtype f16
	$(BIN) judge --model target/toy/toy-model --out target/toy/toy-judge

# DreamBooth's protocol on the toy world (configs/toy-bench/): 5 subjects x 25 prompts x 4 seeds,
# LoRA, MoSLoRA and the zero / identity / kaiming mixers, scored by the toy world's judge; two
# tasks at a time, resumable (run it again). Results in target/toy-bench/gather/.
toy-bench: build
	$(BIN) sweep run configs/toy-bench/sweep.yaml --local --jobs 2

# moslora against the diffusers + peft reference on the same models, batches, threads and
# steps (bench/run.py); writes bench/results/cpu-<date>.md. BENCH_QUICK=1: a short smoke run.
bench: build $(VENV)/.reference
	$(PY) bench/run.py

fmt:
	cargo fmt --all

clippy: $(VENV)/.torch $(VENV)/.libheif
	cargo clippy --release --all-targets -- -D warnings

clean:
	rm -rf target $(VENV)
