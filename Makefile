# rwsgi: build the engine and both server modules, run the demo, the tests and the benchmark.
# Every target installs what it needs (make deps is idempotent).

SHELL := /bin/bash
PYTHON_SYS := /usr/bin/python3
NGINX_SRC := $(CURDIR)/target/nginx-src
export PYO3_PYTHON := $(PYTHON_SYS)
export NGINX_BUILD_DIR := $(NGINX_SRC)/objs
MODULES := $(CURDIR)/target/modules
VENV := $(CURDIR)/target/venv
WHEELS := $(CURDIR)/target/wheels
SERVER ?= nginx

APT_PACKAGES := build-essential pkg-config nginx nginx-dev apache2 apache2-dev \
	python3-dev python3-venv libclang-dev libpcre2-dev libssl-dev zlib1g-dev curl \
	libapache2-mod-wsgi-py3 wrk openssl

.PHONY: deps build wheel serve-venv demo test test-rust test-servers bench soak lint clean

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
$(NGINX_SRC)/objs/Makefile:
	rm -rf $(NGINX_SRC) && mkdir -p target && cp -a /usr/share/nginx/src $(NGINX_SRC)
	cd $(NGINX_SRC) && source ./conf_flags && \
		./configure "$${NGX_CONF_FLAGS[@]}" --with-cc-opt='-g -O2 -fPIC' --with-ld-opt='-fPIC' >/dev/null

build: deps $(NGINX_SRC)/objs/Makefile
	cargo build --release --workspace
	mkdir -p $(MODULES)
	install -m 0755 target/release/libngx_http_rwsgi_module.so $(MODULES)/ngx_http_rwsgi_module.so.new
	mv -f $(MODULES)/ngx_http_rwsgi_module.so.new $(MODULES)/ngx_http_rwsgi_module.so
	install -m 0755 target/release/libmod_rwsgi.so $(MODULES)/mod_rwsgi.so.new
	mv -f $(MODULES)/mod_rwsgi.so.new $(MODULES)/mod_rwsgi.so
	@chmod o+rx $(CURDIR) $(CURDIR)/target $(MODULES)

# The Python package: the `rwsgi` command and both modules built for $(PYTHON_SYS)
# (setup.py runs cargo; `pip install .` does the same into the current environment).
wheel: deps $(NGINX_SRC)/objs/Makefile
	mkdir -p $(WHEELS)
	$(VENV)/bin/python -m pip wheel --no-deps -q -w $(WHEELS) .

# target/serve-venv, which tests/test_serve.py runs `rwsgi` from: `pip install .` into a
# fresh $(PYTHON_SYS) venv, redone only when the package's or the Rust sources change.
serve-venv: deps $(NGINX_SRC)/objs/Makefile
	$(PYTHON_SYS) tests/harness/serve_venv.py

demo: build
	$(PYTHON_SYS) examples/demo.py --server $(SERVER)

test-rust: deps $(NGINX_SRC)/objs/Makefile
	cargo test --release --workspace

test-servers: build serve-venv
	$(VENV)/bin/pytest -q tests
	RWSGI_VALIDATE=1 $(VENV)/bin/pytest -q tests -m 'not server_side'

test: build test-rust test-servers

lint: $(NGINX_SRC)/objs/Makefile
	cargo fmt --all --check
	cargo clippy --release --workspace --all-targets -- -D warnings

bench: build
	$(PYTHON_SYS) bench/run.py

# Memory soak: 1,000,000 mixed requests per server, worker RSS before/after.
soak: build
	$(PYTHON_SYS) bench/soak.py

clean:
	cargo clean
