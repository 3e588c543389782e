#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for benches/peers.rs, with the server's durability defaults
# (fsync, synchronous_commit and full_page_writes on), in a fresh temporary directory, reachable
# only through a unix socket in that directory (no TCP port is opened).
#
#   scripts/pg-throwaway.sh cargo bench --bench peers   # run a command against a fresh cluster,
#                                                       # with PAYLEDGER_BENCH_PG_URL set; the
#                                                       # cluster is stopped and deleted after it
#   scripts/pg-throwaway.sh start                       # start one; prints the export line
#   scripts/pg-throwaway.sh stop DIR                    # stop the one in DIR and delete it
#
# It uses the installed server (Debian: /usr/lib/postgresql/*/bin) and installs the `postgresql`
# package when there is none and it runs as root. PostgreSQL refuses to run as root, so as root
# the cluster belongs to the `postgres` user (`nobody` if there is none). PGPORT picks the port
# number the socket is named after (5433 by default; the directory is private, so any will do).
set -euo pipefail

port="${PGPORT:-5433}"

die() {
    echo "pg-throwaway: $*" >&2
    exit 2
}

# The newest installed server's bin directory, installing the server if allowed.
server_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z "$bin" && $(id -u) -eq 0 ]]; then
        echo "pg-throwaway: installing postgresql" >&2
        apt-get update -qq >&2
        apt-get install -y -qq postgresql >&2
        bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    [[ -x "$bin/pg_ctl" ]] || die "no PostgreSQL server found (apt-get install postgresql)"
    echo "$bin"
}

# The user the server runs as: never root.
server_user() {
    if [[ $(id -u) -ne 0 ]]; then
        id -un
    elif id postgres >/dev/null 2>&1; then
        echo postgres
    else
        echo nobody
    fi
}

# Runs a command as the server's user, from a directory that user can enter.
as_server_user() {
    local user dir=$1
    shift
    user=$(server_user)
    if [[ $(id -u) -eq 0 ]]; then
        (cd "$dir" && runuser -u "$user" -- "$@")
    else
        (cd "$dir" && "$@")
    fi
}

url_for() {
    echo "host=$1 port=$port user=postgres dbname=postgres"
}

# Starts a cluster in a new directory and prints that directory.
start_cluster() {
    local bin dir
    bin=$(server_bin)
    dir=$(mktemp -d "${TMPDIR:-/tmp}/pg-throwaway.XXXXXX")
    chown "$(server_user)" "$dir"
    as_server_user "$dir" "$bin/initdb" --pgdata="$dir/data" --username=postgres \
        --auth=trust --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    as_server_user "$dir" "$bin/pg_ctl" --pgdata="$dir/data" --log="$dir/server.log" --wait \
        --options="-c listen_addresses='' -c unix_socket_directories='$dir' -c port=$port \
                   -c max_connections=150 -c fsync=on -c synchronous_commit=on \
                   -c full_page_writes=on" \
        start >/dev/null \
        || { cat "$dir/server.log" >&2; die "the server did not start"; }
    echo "$dir"
}

stop_cluster() {
    local dir=$1 bin
    [[ -d "$dir/data" ]] || die "no cluster in $dir"
    bin=$(server_bin)
    as_server_user "$dir" "$bin/pg_ctl" --pgdata="$dir/data" --mode=fast --wait stop >/dev/null \
        || echo "pg-throwaway: pg_ctl stop failed; see $dir/server.log" >&2
    rm -rf "$dir"
}

case "${1:-}" in
"")
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
start)
    dir=$(start_cluster)
    echo "export PAYLEDGER_BENCH_PG_URL='$(url_for "$dir")'"
    echo "# stop it with: $0 stop $dir"
    ;;
stop)
    [[ $# -eq 2 ]] || die "usage: $0 stop DIR"
    stop_cluster "$2"
    ;;
*)
    dir=$(start_cluster)
    trap 'stop_cluster "$dir"' EXIT
    echo "pg-throwaway: PostgreSQL in $dir" >&2
    status=0
    PAYLEDGER_BENCH_PG_URL=$(url_for "$dir") "$@" || status=$?
    exit "$status"
    ;;
esac
