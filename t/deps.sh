#!/bin/sh
# Checks (and, as root, installs) the Debian packages a target needs.
# usage: t/deps.sh build|test|demo|bench|fuzz|sanitize
set -e
case "$1" in
    build) pkgs="apache2-dev uuid-dev gcc make" ;;
    # the peer columns: nginx, HAProxy and Caddy, each started by the bench
    bench) pkgs="apache2 apache2-dev uuid-dev gcc make nginx haproxy caddy" ;;
    demo)  pkgs="apache2 apache2-dev uuid-dev gcc make python3-websockets" ;;
    # chromium: the headless browser of t/integration/test_browser.py
    test)  pkgs="apache2 apache2-dev uuid-dev gcc make python3-pytest python3-websockets python3-h2 openssl chromium" ;;
    # libFuzzer and the sanitizer runtimes of clang 14 (Debian 12)
    fuzz)  pkgs="clang libclang-rt-14-dev apache2-dev" ;;
    # gcc's ASan and UBSan runtimes, for SANITIZE=1
    sanitize) pkgs="gcc libasan8 libubsan1" ;;
    *) echo "usage: $0 build|test|demo|bench|fuzz|sanitize" >&2; exit 2 ;;
esac
missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing
    # Debian starts the stock apache2 service on install; our tests and the
    # demo run their own httpd, so keep the system one out of the way.
    case "$missing " in
        *" apache2 "*)
            echo "stopping the apache2 service the install started"
            apache2ctl -k stop >/dev/null 2>&1 || true
            service apache2 stop >/dev/null 2>&1 || true
            ;;
    esac
    # so do nginx's and Caddy's (haproxy's enables itself): the bench runs
    # its own instances on loopback
    for svc in nginx haproxy caddy; do
        case "$missing " in
            *" $svc "*)
                echo "stopping and disabling the $svc service the install set up"
                systemctl disable --now "$svc" >/dev/null 2>&1 \
                    || service "$svc" stop >/dev/null 2>&1 || true
                ;;
        esac
    done
else
    echo "missing Debian packages:$missing" >&2
    echo "install them with: sudo apt-get install$missing" >&2
    exit 1
fi
