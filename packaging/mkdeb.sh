#!/bin/bash
# make deb: builds rwsgi-daemon, libnginx-mod-http-rwsgi and libapache2-mod-rwsgi into
# OUTDIR from target/modules. Each package's tree is laid out by `make install-*-files`
# (the modules as Debian's own module packages lay them out, each with a link to the
# daemon-mode program beside it; the program in /usr/lib/rwsgi with its systemd unit) and
# gets the dependencies those declare, read from this machine: the nginx ABI the module
# was built against (nginx's Provides), the Apache module API (apache2-bin's Provides),
# the libraries the binary links (dpkg-shlibdeps: libc6, libgcc-s1, libpython3.X) and the
# python3 minor version of that libpython. Both module packages depend on rwsgi-daemon of
# the same version: the modules and the program speak a protocol of that build. Maintainer
# scripts: packaging/deb/PACKAGE.{postinst,prerm,postrm}, where a package needs them
# (rwsgi-daemon has none: its only unit is a template, which nothing enables or starts on
# install, as dh_installsystemd does for templates).
#
# usage: MAKE=make packaging/mkdeb.sh OUTDIR
set -euo pipefail

out=${1:?usage: mkdeb.sh OUTDIR}
make=${MAKE:-make}
repo=$(cd "$(dirname "$0")/.." && pwd)
modules=$repo/target/modules
scripts=$repo/packaging/deb

die() { echo "mkdeb: $*" >&2; exit 1; }

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$repo/Cargo.toml")
[ -n "$version" ] || die "no version in Cargo.toml's [workspace.package]"
arch=$(dpkg --print-architecture)
maintainer="rwsgi developers <dev@rwsgi.invalid>"

# The nginx module must come from the sources of the installed nginx: its ABI name is the
# one that nginx Provides (Debian bumps the suffix when the module ABI changes).
nginx_version=$(dpkg-query -W -f='${Version}' nginx) || die "nginx is not installed"
src_version=$(sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p' "$repo/target/nginx-src/src/core/nginx.h" 2>/dev/null || true)
[ "${nginx_version%%-*}" = "$src_version" ] \
	|| die "the module was built against nginx ${src_version:-?}, the installed nginx is $nginx_version"
nginx_abi=$(dpkg-query -W -f='${Provides}' nginx | tr ',' '\n' | grep -oE 'nginx-abi-[^ ]+' || true)
[ -n "$nginx_abi" ] || die "the installed nginx provides no nginx-abi-*"
apache_api=$(dpkg-query -W -f='${Provides}' apache2-bin | tr ',' '\n' | grep -oE 'apache2-api-[0-9]+ *$' | tr -d ' ' || true)
[ -n "$apache_api" ] || die "apache2-bin provides no apache2-api-*"

stage=$(mktemp -d /tmp/rwsgi-deb.XXXXXX)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/debian"
# dpkg-shlibdeps reads the package names from debian/control.
cat > "$stage/debian/control" <<CONTROL
Source: rwsgi

Package: rwsgi-daemon
Architecture: any

Package: libnginx-mod-http-rwsgi
Architecture: any

Package: libapache2-mod-rwsgi
Architecture: any
CONTROL

# python3 (>= 3.X), python3 (<< 3.X+1) for the libpython3.X the module links, as
# Debian's libapache2-mod-wsgi-py3 declares.
python_range() {
	local so=$1 minor
	minor=$(readelf -d "$so" | sed -n 's/.*Shared library: \[libpython3\.\([0-9]*\)\.so.*/\1/p')
	[ -n "$minor" ] || die "$so links no libpython3"
	echo "python3 (>= 3.$minor), python3 (<< 3.$((minor + 1)))"
}

# A package tree in $stage/debian/PKG: files from `make TARGET`, its binary (a module or
# the program) stripped as dh_strip does, docs, maintainer scripts, md5sums, conffiles
# (every file under /etc), control. `depends` may be empty.
build_pkg() {
	local pkg=$1 target=$2 so_rel=$3 depends=$4 extra=$5 description=$6
	local root=$stage/debian/$pkg
	"$make" --no-print-directory -s -C "$repo" "$target" DESTDIR="$root" PREFIX=/usr SYSCONFDIR=/etc
	local so=$root/$so_rel
	# dh_strip: --strip-unneeded for shared objects, the whole symbol table of a program
	case "$so" in
	*.so) strip --remove-section=.comment --remove-section=.note --strip-unneeded "$so" ;;
	*) strip --remove-section=.comment --remove-section=.note "$so" ;;
	esac
	local shlibs
	shlibs=$(cd "$stage" && dpkg-shlibdeps -O -e"debian/$pkg/$so_rel" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
	[ -n "$shlibs" ] || die "dpkg-shlibdeps found nothing for $so_rel"

	install -d -m 0755 "$root/usr/share/doc/$pkg" "$root/DEBIAN"
	cat > "$root/usr/share/doc/$pkg/copyright" <<COPYRIGHT
rwsgi: WSGI (PEP 3333) hosting in Rust for nginx and Apache httpd.

License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
	chmod 0644 "$root/usr/share/doc/$pkg/copyright"

	local s
	for s in postinst prerm postrm; do
		if [ -e "$scripts/$pkg.$s" ]; then
			install -m 0755 "$scripts/$pkg.$s" "$root/DEBIAN/$s"
		fi
	done
	(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
		> "$root/DEBIAN/md5sums"
	if [ -d "$root/etc" ]; then
		(cd "$root" && find etc -type f -printf '/%p\n' | sort) > "$root/DEBIAN/conffiles"
	fi
	chmod 0644 "$root/DEBIAN/md5sums" "$root"/DEBIAN/conffiles 2>/dev/null || true

	local size
	size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
	{
		echo "Package: $pkg"
		echo "Source: rwsgi"
		echo "Version: $version"
		echo "Architecture: $arch"
		echo "Maintainer: $maintainer"
		echo "Installed-Size: $size"
		echo "Depends: ${depends:+$depends, }$shlibs, $(python_range "$so")"
		[ -z "$extra" ] || echo "$extra"
		echo "Section: httpd"
		echo "Priority: optional"
		echo "Description: $description"
	} > "$root/DEBIAN/control"

	mkdir -p "$out"
	dpkg-deb --root-owner-group -Zxz --build "$root" "$out/${pkg}_${version}_${arch}.deb" >/dev/null
	echo "$out/${pkg}_${version}_${arch}.deb"
}

build_pkg rwsgi-daemon install-daemon-files \
	usr/lib/rwsgi/rwsgi-daemon \
	"" "" \
	"daemon mode of the rwsgi WSGI modules for nginx and Apache httpd
 /usr/lib/rwsgi/rwsgi-daemon runs the daemon process groups of rwsgi's nginx
 and Apache modules (wsgi_daemon, WSGIDaemonProcess): a supervisor, started by
 the web server as root, runs each group's WSGI application in processes of
 its own under the group's user, and the server's workers pass requests to
 them over unix sockets. Also a systemd template unit, rwsgi-daemon@.service,
 for groups started at boot; it is not enabled on install."

daemon_dep="rwsgi-daemon (= $version)"

build_pkg libnginx-mod-http-rwsgi install-nginx-files \
	usr/lib/nginx/modules/ngx_http_rwsgi_module.so \
	"$nginx_abi, $daemon_dep" "Recommends: nginx" \
	"WSGI (PEP 3333) module for nginx (rwsgi)
 ngx_http_rwsgi_module runs WSGI applications (Django, Flask, plain WSGI) inside
 nginx's worker processes, on an embedded CPython and a per-worker thread pool,
 or in daemon process groups of their own (rwsgi-daemon), configured with
 wsgi_* directives. Enabled through
 /etc/nginx/modules-enabled/50-mod-http-rwsgi.conf."

build_pkg libapache2-mod-rwsgi install-apache-files \
	usr/lib/apache2/modules/mod_rwsgi.so \
	"$apache_api, apache2-bin (>= 2.4.16), $daemon_dep" "" \
	"WSGI (PEP 3333) module for Apache httpd 2.4 (rwsgi, mod_wsgi's directives)
 mod_rwsgi runs WSGI applications inside Apache's worker processes on an
 embedded CPython, or in daemon process groups (rwsgi-daemon), configured with
 mod_wsgi's directives. It cannot be loaded together with mod_wsgi: a2enmod
 rwsgi refuses while the wsgi module is enabled."
