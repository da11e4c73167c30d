# rwsgi: build the engine and both server modules, run the demo, the tests and the benchmark.
# Every target installs what it needs (make deps is idempotent).

SHELL := /bin/bash
# Runs the tooling (the pytest venv, the demo, the benchmark).
PYTHON_SYS := /usr/bin/python3
# The Python the engine and both modules are built against (its libpython is what the
# servers load): `make build PYTHON=/opt/python3.12/bin/python3.12`.
PYTHON := $(PYTHON_SYS)
export PYO3_PYTHON := $(PYTHON)
# The configured nginx source tree the nginx module is built against; it must be the
# tree (same version, same configure flags) of the nginx that loads the module. Default:
# Debian's nginx-dev sources, configured with Debian's flags by the rule below.
# `make build NGINX_SRC_DIR=/path/to/nginx-1.28.3` uses an already configured tree.
DEFAULT_NGINX_SRC := $(CURDIR)/target/nginx-src
NGINX_SRC_DIR := $(DEFAULT_NGINX_SRC)
NGINX_CONFIGURED := $(NGINX_SRC_DIR)/objs/Makefile
export NGINX_BUILD_DIR := $(NGINX_SRC_DIR)/objs
# Cargo's output (another directory keeps builds for another Python or nginx apart).
export CARGO_TARGET_DIR ?= $(CURDIR)/target
# Where `make build` installs the two modules (the tests load them from there).
MODULES := $(CURDIR)/target/modules
VENV := $(CURDIR)/target/venv
SERVER ?= nginx

APT_PACKAGES := build-essential pkg-config nginx nginx-dev apache2 apache2-dev \
	python3-dev python3-venv libclang-dev libpcre2-dev libssl-dev zlib1g-dev curl \
	libapache2-mod-wsgi-py3 wrk openssl

.PHONY: deps build demo test test-rust test-servers matrix bench soak lint clean

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# the servers are started by the tests and the demo, not by the system
	@systemctl disable --now nginx apache2 >/dev/null 2>&1 || true
	@[ -x $(VENV)/bin/pytest ] || { $(PYTHON_SYS) -m venv $(VENV) && $(VENV)/bin/pip install -q pytest; }

# nginx-sys needs a configured nginx tree with the same flags as the installed binary,
# so the module signature matches `nginx -V`.
ifeq ($(NGINX_SRC_DIR),$(DEFAULT_NGINX_SRC))
$(NGINX_CONFIGURED):
	rm -rf $(NGINX_SRC_DIR) && mkdir -p target && cp -a /usr/share/nginx/src $(NGINX_SRC_DIR)
	cd $(NGINX_SRC_DIR) && source ./conf_flags && \
		./configure "$${NGX_CONF_FLAGS[@]}" --with-cc-opt='-g -O2 -fPIC' --with-ld-opt='-fPIC' >/dev/null
else
$(NGINX_CONFIGURED):
	@echo "NGINX_SRC_DIR=$(NGINX_SRC_DIR) is not a configured nginx source tree (no objs/Makefile):" \
		"run its configure (with --with-compat and the flags of the nginx that will load the module) first" >&2
	@exit 1
endif

build: deps $(NGINX_CONFIGURED)
	cargo build --release --workspace
	mkdir -p $(MODULES)
	install -m 0755 $(CARGO_TARGET_DIR)/release/libngx_http_rwsgi_module.so $(MODULES)/ngx_http_rwsgi_module.so.new
	mv -f $(MODULES)/ngx_http_rwsgi_module.so.new $(MODULES)/ngx_http_rwsgi_module.so
	install -m 0755 $(CARGO_TARGET_DIR)/release/libmod_rwsgi.so $(MODULES)/mod_rwsgi.so.new
	mv -f $(MODULES)/mod_rwsgi.so.new $(MODULES)/mod_rwsgi.so
	@chmod o+rx $(CURDIR) $(CURDIR)/target $(MODULES)

demo: build
	$(PYTHON_SYS) examples/demo.py --server $(SERVER)

test-rust: deps $(NGINX_CONFIGURED)
	cargo test --release --workspace

test-servers: build
	$(VENV)/bin/pytest -q tests
	RWSGI_VALIDATE=1 $(VENV)/bin/pytest -q tests -m 'not server_side'

test: build test-rust test-servers

# Builds and tests on Debian 13 (chroot), nginx 1.28 and Python 3.9/3.10/3.12/3.13
# (.ci/matrix says how); writes docs/MATRIX.md, fails if a combination fails.
matrix: deps
	bash .ci/matrix

lint: $(NGINX_CONFIGURED)
	cargo fmt --all --check
	cargo clippy --release --workspace --all-targets -- -D warnings

bench: build
	$(PYTHON_SYS) bench/run.py

# Memory soak: 1,000,000 mixed requests per server, worker RSS before/after.
soak: build
	$(PYTHON_SYS) bench/soak.py

clean:
	cargo clean
