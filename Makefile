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
# The nginx module built with its test-only fault-injection feature, in a target dir of
# its own so that it never replaces the real module.
FAULT_TARGET := $(CURDIR)/target/fault-injection
FAULT_MODULES := $(CURDIR)/target/modules-fault
VENV := $(CURDIR)/target/venv
WHEELS := $(CURDIR)/target/wheels
SERVER ?= nginx

APT_PACKAGES := build-essential pkg-config nginx nginx-dev apache2 apache2-dev \
	python3-dev python3-venv libclang-dev libpcre2-dev libssl-dev zlib1g-dev curl \
	libapache2-mod-wsgi-py3 wrk openssl

.PHONY: deps build fault-module wheel serve-venv demo test test-rust test-servers \
	test-frameworks matrix bench bench-ab soak lint clean install uninstall install-nginx-files \
	install-apache-files deb

# make install / make deb lay the modules out as Debian's own module packages do
# (libnginx-mod-http-*, libapache2-mod-*). The config files point at $(PREFIX); nginx and
# Apache read them from $(SYSCONFDIR) whatever the prefix.
PREFIX ?= /usr
SYSCONFDIR ?= /etc
DESTDIR ?=
NGX_MODDIR = $(PREFIX)/lib/nginx/modules
NGX_AVAILDIR = $(PREFIX)/share/nginx/modules-available
NGX_ENABLEDDIR = $(SYSCONFDIR)/nginx/modules-enabled
APACHE_MODDIR = $(PREFIX)/lib/apache2/modules
APACHE_CONFDIR = $(SYSCONFDIR)/apache2
DEB_DIR ?= $(CURDIR)/target/deb

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# the servers are started by the tests and the demo, not by the system
	@systemctl disable --now nginx apache2 >/dev/null 2>&1 || true
	@# prometheus_client: tests/test_status.py parses the status page's Prometheus output with it
	@[ -x $(VENV)/bin/pytest ] && $(VENV)/bin/python -c 'import prometheus_client' 2>/dev/null || \
		{ { [ -x $(VENV)/bin/python ] || $(PYTHON_SYS) -m venv $(VENV); } && $(VENV)/bin/pip install -q pytest prometheus_client; }

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
	@# daemon mode's supervisor and app processes; the modules look for it beside them
	install -m 0755 $(CARGO_TARGET_DIR)/release/rwsgi-daemon $(MODULES)/rwsgi-daemon.new
	mv -f $(MODULES)/rwsgi-daemon.new $(MODULES)/rwsgi-daemon
	@chmod o+rx $(CURDIR) $(CURDIR)/target $(MODULES)

# tests/test_faults.py: panics injected on the loop side (ngx-module/src/fault.rs).
fault-module: deps $(NGINX_CONFIGURED)
	cargo build --release -p ngx_http_rwsgi_module --features fault-injection --target-dir $(FAULT_TARGET)
	mkdir -p $(FAULT_MODULES)
	install -m 0755 $(FAULT_TARGET)/release/libngx_http_rwsgi_module.so $(FAULT_MODULES)/ngx_http_rwsgi_module.so.new
	mv -f $(FAULT_MODULES)/ngx_http_rwsgi_module.so.new $(FAULT_MODULES)/ngx_http_rwsgi_module.so
	@chmod o+rx $(FAULT_MODULES)
# The Python package: the `rwsgi` command and both modules built for $(PYTHON_SYS)
# (setup.py runs cargo; `pip install .` does the same into the current environment).
wheel: deps $(NGINX_CONFIGURED)
	mkdir -p $(WHEELS)
	$(VENV)/bin/python -m pip wheel --no-deps -q -w $(WHEELS) .

# target/serve-venv, which tests/test_serve.py runs `rwsgi` from: `pip install .` into a
# fresh $(PYTHON_SYS) venv, redone only when the package's or the Rust sources change.
serve-venv: deps $(NGINX_CONFIGURED)
	$(PYTHON_SYS) tests/harness/serve_venv.py

demo: build
	$(PYTHON_SYS) examples/demo.py --server $(SERVER)

test-rust: deps $(NGINX_CONFIGURED)
	cargo test --release --workspace

# The framework tests (tests/test_frameworks.py) pip-install examples/requirements-frameworks.txt
# into a venv cached under target/framework-venvs/ (PyPI on the first run, seconds after).
# The validated pass leaves them out: they mount their projects by absolute path, which it
# never wraps.
test-servers: build fault-module serve-venv
	$(VENV)/bin/pytest -q tests
	RWSGI_VALIDATE=1 $(VENV)/bin/pytest -q tests -m 'not server_side and not frameworks'

test-frameworks: build
	$(VENV)/bin/pytest -q tests/test_frameworks.py

test: build test-rust test-servers

# Builds and tests on Debian 13 (chroot), nginx 1.28 and Python 3.9/3.10/3.12/3.13
# (.ci/matrix says how); writes docs/MATRIX.md, fails if a combination fails.
matrix: deps
	bash .ci/matrix

lint: $(NGINX_CONFIGURED)
	cargo fmt --all --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	cargo clippy --release -p ngx_http_rwsgi_module --features fault-injection -- -D warnings

bench: build
	$(PYTHON_SYS) bench/run.py

# A/B of the current modules against those of another revision, interleaved in the same
# rounds (every workload, both servers): `make bench-ab BASE=main~3`.
BASE ?= HEAD
BASE_DIR := $(CURDIR)/target/bench-base
bench-ab: build
	rm -rf $(BASE_DIR)/src && mkdir -p $(BASE_DIR)/modules
	git worktree add --detach $(BASE_DIR)/src $(BASE) >/dev/null
	cd $(BASE_DIR)/src && CARGO_TARGET_DIR=$(BASE_DIR)/target cargo build --release \
		-p ngx_http_rwsgi_module -p mod_rwsgi; rc=$$?; cd $(CURDIR); \
		git worktree remove --force $(BASE_DIR)/src; exit $$rc
	install -m 0755 $(BASE_DIR)/target/release/libngx_http_rwsgi_module.so $(BASE_DIR)/modules/ngx_http_rwsgi_module.so
	install -m 0755 $(BASE_DIR)/target/release/libmod_rwsgi.so $(BASE_DIR)/modules/mod_rwsgi.so
	@chmod o+rx $(BASE_DIR) $(BASE_DIR)/modules
	$(PYTHON_SYS) bench/run.py --base $(BASE_DIR)/modules \
		--only rwsgi-nginx,rwsgi-nginx-base,rwsgi-apache,rwsgi-apache-base --no-write

# Memory soak: 1,000,000 mixed requests per server, worker RSS before/after.
soak: build
	$(PYTHON_SYS) bench/soak.py

clean:
	cargo clean

# make install does not build (the build step installs packages and disables the system's
# nginx and apache2 services, which an install must not do): `make build` first.
$(MODULES)/%.so:
	@echo "$@ is missing: run 'make build' first" >&2; exit 1

# Files that a Debian package owns must be changed by apt, not by make.
define not_packaged
	@if [ -z "$(DESTDIR)" ]; then for f in $(1); do \
		pkg=$$(dpkg-query -S "$$f" 2>/dev/null | cut -d: -f1); \
		if [ -n "$$pkg" ]; then echo "$$f belongs to the package $$pkg: use 'apt purge $$pkg' first" >&2; exit 1; fi; \
	done; fi
endef

install-nginx-files: $(MODULES)/ngx_http_rwsgi_module.so
	$(call not_packaged,$(NGX_MODDIR)/ngx_http_rwsgi_module.so)
	install -d -m 0755 $(DESTDIR)$(NGX_MODDIR) $(DESTDIR)$(NGX_AVAILDIR)
	install -m 0644 $< $(DESTDIR)$(NGX_MODDIR)/ngx_http_rwsgi_module.so
	sed 's|@NGX_MODDIR@|$(NGX_MODDIR)|' packaging/mod-http-rwsgi.conf.in > $(DESTDIR)$(NGX_AVAILDIR)/mod-http-rwsgi.conf
	chmod 0644 $(DESTDIR)$(NGX_AVAILDIR)/mod-http-rwsgi.conf

install-apache-files: $(MODULES)/mod_rwsgi.so
	$(call not_packaged,$(APACHE_MODDIR)/mod_rwsgi.so)
	install -d -m 0755 $(DESTDIR)$(APACHE_MODDIR) $(DESTDIR)$(APACHE_CONFDIR)/mods-available
	install -m 0644 $< $(DESTDIR)$(APACHE_MODDIR)/mod_rwsgi.so
	sed 's|@APACHE_MODDIR@|$(APACHE_MODDIR)|' packaging/rwsgi.load.in > $(DESTDIR)$(APACHE_CONFDIR)/mods-available/rwsgi.load
	install -m 0644 packaging/rwsgi.conf $(DESTDIR)$(APACHE_CONFDIR)/mods-available/rwsgi.conf
	chmod 0644 $(DESTDIR)$(APACHE_CONFDIR)/mods-available/rwsgi.load

# nginx: enabled by the modules-enabled link (as a libnginx-mod-* package does on install).
# Apache: `a2enmod rwsgi`, which refuses while mod_wsgi is enabled (Conflicts: in rwsgi.load).
install: install-nginx-files install-apache-files
	install -d -m 0755 $(DESTDIR)$(NGX_ENABLEDDIR)
	ln -sfn $(NGX_AVAILDIR)/mod-http-rwsgi.conf $(DESTDIR)$(NGX_ENABLEDDIR)/50-mod-http-rwsgi.conf
	@echo "nginx: module enabled ($(NGX_ENABLEDDIR)/50-mod-http-rwsgi.conf); 'nginx -s reload' or 'systemctl reload nginx' loads it"
	@echo "apache: 'a2enmod rwsgi' (after 'a2dismod wsgi' if mod_wsgi is enabled), then 'systemctl restart apache2'"

uninstall:
	$(call not_packaged,$(NGX_MODDIR)/ngx_http_rwsgi_module.so $(APACHE_MODDIR)/mod_rwsgi.so)
	rm -f $(DESTDIR)$(NGX_ENABLEDDIR)/50-mod-http-rwsgi.conf $(DESTDIR)$(NGX_AVAILDIR)/mod-http-rwsgi.conf \
		$(DESTDIR)$(NGX_MODDIR)/ngx_http_rwsgi_module.so
	@# on the system: a2dismod also forgets a2enmod's record of the module
	if [ -z "$(DESTDIR)" ] && [ -x /usr/sbin/a2dismod ] && [ -e $(APACHE_CONFDIR)/mods-available/rwsgi.load ]; then \
		APACHE_CONFDIR=$(APACHE_CONFDIR) a2dismod -q -f -p rwsgi; fi
	for f in rwsgi.load rwsgi.conf; do \
		if [ -L $(DESTDIR)$(APACHE_CONFDIR)/mods-enabled/$$f ]; then rm -f $(DESTDIR)$(APACHE_CONFDIR)/mods-enabled/$$f; fi; \
	done
	rm -f $(DESTDIR)$(APACHE_CONFDIR)/mods-available/rwsgi.load $(DESTDIR)$(APACHE_CONFDIR)/mods-available/rwsgi.conf \
		$(DESTDIR)$(APACHE_MODDIR)/mod_rwsgi.so
	@for d in $(DESTDIR)$(NGX_AVAILDIR) $(DESTDIR)$(NGX_MODDIR) $(DESTDIR)$(PREFIX)/lib/nginx; do \
		if [ -d $$d ]; then rmdir --ignore-fail-on-non-empty $$d; fi; \
	done

# libnginx-mod-http-rwsgi and libapache2-mod-rwsgi in $(DEB_DIR) (packaging/mkdeb.sh).
deb: build
	MAKE="$(MAKE)" packaging/mkdeb.sh $(DEB_DIR)
