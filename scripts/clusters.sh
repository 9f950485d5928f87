#!/usr/bin/env bash
# Loopback clusters for the cluster tests, next to (never touching) the main RabbitMQ
# (127.0.0.1:5672, rabbit@localhost) and Redis (127.0.0.1:6379):
#   - a Redis Cluster: 3 masters with one replica each, ports 7000-7005;
#   - Redis Sentinel: primary 6380, replica 6381, sentinels 26379-26381, master `mymaster`;
#   - a RabbitMQ cluster: nodes wxpush-c1..c3@localhost, AMQP ports 5701-5703, Erlang
#     distribution ports 25701-25703, no plugins (so no management or Prometheus port);
#   - a secured set (tests/redis_secure_modes.rs), native TLS only and passwords everywhere,
#     with a CA and a localhost/127.0.0.1 certificate this script makes (secure/): a Redis
#     Cluster of 3 masters without replicas on TLS ports 7100-7102 (`tls-cluster yes`, ACL
#     user `wxpush`), and a primary on TLS port 6390 watched by one sentinel on TLS port
#     26390 (master `securemaster`), the sentinel's password not the primary's.
# Data, logs and configs live under /tmp/wxpush-clusters (WXPUSH_CLUSTERS_DIR). Every
# Redis writes an always-fsynced AOF with noeviction, as docs/reliability.md asks.
#
#   scripts/clusters.sh start    # start what is down (idempotent: running nodes are reused),
#                                # then print the env vars the tests read, as `export` lines
#   scripts/clusters.sh start-secure   # only the secured set, then the env lines
#   scripts/clusters.sh env      # only print those lines: eval "$(scripts/clusters.sh env)"
#   scripts/clusters.sh status   # what is up
#   scripts/clusters.sh stop     # stop everything this script started
#   scripts/clusters.sh rabbitmqctl NODE ARGS...   # rabbitmqctl on one of the nodes (1-3)
#
# Progress goes to stderr, the export lines to stdout: eval "$(scripts/clusters.sh start)".
set -euo pipefail

BASE=${WXPUSH_CLUSTERS_DIR:-/tmp/wxpush-clusters}
SELF="$(cd "$(dirname "$0")" && pwd)/clusters.sh"
CLUSTER_PORTS=(7000 7001 7002 7003 7004 7005)
PRIMARY_PORT=6380
REPLICA_PORT=6381
SENTINEL_PORTS=(26379 26380 26381)
MASTER_NAME=mymaster
SECURE_CLUSTER_PORTS=(7100 7101 7102)
SECURE_PRIMARY_PORT=6390
SECURE_SENTINEL_PORT=26390
SECURE_MASTER_NAME=securemaster
# Test-only passwords of loopback servers: `env` prints them for the tests.
SECURE_CLUSTER_USER=wxpush
SECURE_CLUSTER_PASSWORD=cluster-secret-for-tests
SECURE_PRIMARY_PASSWORD=primary-secret-for-tests
SECURE_SENTINEL_PASSWORD=sentinel-secret-for-tests
RABBIT_NODES=(1 2 3)
RABBIT_LIB=${RABBIT_LIB:-/usr/lib/rabbitmq/bin}

say() { printf '%s\n' "$*" >&2; }
die() {
    say "scripts/clusters.sh: $*"
    exit 1
}

up() { redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG; }

await_port() {
    for _ in $(seq 1 100); do
        up "$1" && return 0
        sleep 0.1
    done
    die "Redis on port $1 did not start: see $BASE/redis/$1/log"
}

# One Redis: always-fsynced AOF, noeviction, loopback only.
redis_node() {
    local port=$1
    shift
    local dir=$BASE/redis/$port
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$dir" \
        --logfile "$dir/log" --pidfile "$dir/pid" --save "" --appendonly yes \
        --appendfsync always --maxmemory-policy noeviction "$@"
}

start_redis_cluster() {
    for port in "${CLUSTER_PORTS[@]}"; do
        up "$port" && continue
        redis_node "$port" --cluster-enabled yes --cluster-config-file "$BASE/redis/$port/nodes.conf" \
            --cluster-node-timeout 2000
    done
    for port in "${CLUSTER_PORTS[@]}"; do await_port "$port"; done
    if [ "$(redis-cli -p 7000 cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')" = 1 ]; then
        local nodes=()
        for port in "${CLUSTER_PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
        redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$BASE/redis/create.log" ||
            die "redis-cli --cluster create failed: see $BASE/redis/create.log"
    fi
    for _ in $(seq 1 200); do
        if redis-cli -p 7000 cluster info | grep -q 'cluster_state:ok' &&
            [ "$(cluster_masters_with_replicas)" = 3 ]; then
            say "Redis Cluster: ok (7000-7005)"
            return
        fi
        sleep 0.1
    done
    die "the Redis Cluster did not reach cluster_state:ok with 3 replicated masters: see $BASE/redis/*/log"
}

# Masters that have a connected replica (a failover test needs one for each).
cluster_masters_with_replicas() {
    redis-cli -p 7000 cluster nodes | awk '$3 ~ /slave/ && $3 !~ /fail/ && $8 == "connected" { print $4 }' |
        sort -u | wc -l
}

start_sentinel() {
    local master=""
    if up "${SENTINEL_PORTS[0]}"; then
        master=$(redis-cli -p "${SENTINEL_PORTS[0]}" sentinel get-master-addr-by-name "$MASTER_NAME" | sed -n 2p)
    fi
    for port in "$PRIMARY_PORT" "$REPLICA_PORT"; do
        up "$port" && continue
        # A node that comes back follows whoever the sentinels made primary meanwhile.
        local follow=$PRIMARY_PORT
        [ -n "$master" ] && follow=$master
        if [ "$port" = "$follow" ]; then
            redis_node "$port"
        else
            redis_node "$port" --replicaof 127.0.0.1 "$follow"
        fi
    done
    await_port "$PRIMARY_PORT"
    await_port "$REPLICA_PORT"
    for port in "${SENTINEL_PORTS[@]}"; do
        up "$port" && continue
        local dir=$BASE/redis/$port
        mkdir -p "$dir"
        # Sentinels rewrite their config: keep the one they wrote if there is one.
        [ -f "$dir/sentinel.conf" ] || cat >"$dir/sentinel.conf" <<EOF
port $port
bind 127.0.0.1
daemonize yes
dir $dir
logfile $dir/log
pidfile $dir/pid
sentinel monitor $MASTER_NAME 127.0.0.1 $PRIMARY_PORT 2
sentinel down-after-milliseconds $MASTER_NAME 2000
sentinel failover-timeout $MASTER_NAME 10000
sentinel parallel-syncs $MASTER_NAME 1
EOF
        redis-server "$dir/sentinel.conf" --sentinel
    done
    for port in "${SENTINEL_PORTS[@]}"; do await_port "$port"; done
    for _ in $(seq 1 200); do
        local primary replicas
        primary=$(redis-cli -p "${SENTINEL_PORTS[0]}" sentinel get-master-addr-by-name "$MASTER_NAME" | sed -n 2p)
        replicas=$(redis-cli -p "$primary" info replication 2>/dev/null | tr -d '\r' | sed -n 's/^connected_slaves://p')
        if [ "${replicas:-0}" -ge 1 ] && [ "$(sentinels_seen)" -ge 3 ]; then
            say "Redis Sentinel: ok (primary $primary, sentinels 26379-26381)"
            return
        fi
        sleep 0.1
    done
    die "Sentinel did not settle (a primary with a replica, 3 sentinels): see $BASE/redis/*/log"
}

sentinels_seen() {
    redis-cli -p "${SENTINEL_PORTS[0]}" sentinel master "$MASTER_NAME" |
        awk 'prev == "num-other-sentinels" { print $1 + 1 } { prev = $1 }'
}

# The secured set's certificates: a CA, and a certificate for localhost and 127.0.0.1
# signed by it (the addresses clients reach and nodes announce). Made once and kept with the
# data dir (ten years, so a kept dir does not expire under the tests).
secure_certificates() {
    local dir=$BASE/secure
    [ -f "$dir/server.pem" ] && return
    command -v openssl >/dev/null ||
        die "openssl is not installed: the secured set needs it for its certificates (Debian: apt-get install openssl)"
    mkdir -p "$dir"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/san.ext"
    {
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=wxpush clusters.sh test CA" \
            -keyout "$dir/ca.key" -out "$dir/ca.pem" &&
            openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout "$dir/server.key" \
                -out "$dir/server.csr" &&
            openssl x509 -req -days 3650 -CAcreateserial -in "$dir/server.csr" -CA "$dir/ca.pem" \
                -CAkey "$dir/ca.key" -extfile "$dir/san.ext" -out "$dir/server.pem.new"
    } >"$dir/openssl.log" 2>&1 || die "openssl could not make the secured set's certificates: see $dir/openssl.log"
    # Last, so an interrupted run makes them all again.
    mv "$dir/server.pem.new" "$dir/server.pem"
}

# Native TLS only (no plaintext port), as config lines; clients need no certificate.
tls_conf() {
    local dir=$BASE/secure
    printf 'port 0\ntls-port %s\ntls-cert-file %s\ntls-key-file %s\n' "$1" "$dir/server.pem" "$dir/server.key"
    printf 'tls-ca-cert-file %s\ntls-auth-clients no\ntls-replication yes\n' "$dir/ca.pem"
}

# The same as command-line options (paths without spaces: $BASE is ours).
tls_args() { tls_conf "$1" | sed 's/^/--/'; }

# redis-cli to a secured node over TLS, trusting the CA, with the default user's password.
secure_cli() {
    local port=$1 password=$2
    shift 2
    redis-cli --tls --cacert "$BASE/secure/ca.pem" -h 127.0.0.1 -p "$port" --no-auth-warning \
        -a "$password" "$@"
}

secure_up() { secure_cli "$1" "$2" ping 2>/dev/null | grep -q PONG; }

await_secure() {
    for _ in $(seq 1 100); do
        secure_up "$1" "$2" && return 0
        sleep 0.1
    done
    die "secured Redis on port $1 did not start: see $BASE/redis/$1/log"
}

# 3 masters without replicas (failover is the plain cluster's test), the cluster bus over
# TLS so that nodes announce their TLS ports. wxpush logs in as the ACL user `wxpush`; the
# default user has the same password, for redis-cli and for replicas (masterauth).
start_secure_cluster() {
    local password=$SECURE_CLUSTER_PASSWORD first=${SECURE_CLUSTER_PORTS[0]}
    for port in "${SECURE_CLUSTER_PORTS[@]}"; do
        secure_up "$port" "$password" && continue
        # shellcheck disable=SC2046
        redis_node "$port" $(tls_args "$port") --tls-cluster yes --cluster-enabled yes \
            --cluster-config-file "$BASE/redis/$port/nodes.conf" --cluster-node-timeout 2000 \
            --requirepass "$password" --masterauth "$password" \
            --user "$SECURE_CLUSTER_USER" on ">$password" '~*' '&*' '+@all'
    done
    for port in "${SECURE_CLUSTER_PORTS[@]}"; do await_secure "$port" "$password"; done
    if [ "$(secure_cli "$first" "$password" cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')" = 1 ]; then
        local nodes=()
        for port in "${SECURE_CLUSTER_PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
        secure_cli "$first" "$password" --cluster create "${nodes[@]}" --cluster-replicas 0 \
            --cluster-yes >"$BASE/redis/secure-create.log" 2>&1 ||
            die "redis-cli --cluster create (secured set) failed: see $BASE/redis/secure-create.log"
    fi
    for _ in $(seq 1 200); do
        if secure_cli "$first" "$password" cluster info | grep -q 'cluster_state:ok'; then
            say "secured Redis Cluster: ok (TLS 7100-7102, user $SECURE_CLUSTER_USER)"
            return
        fi
        sleep 0.1
    done
    die "the secured Redis Cluster did not reach cluster_state:ok: see $BASE/redis/710*/log"
}

# A primary and one sentinel with passwords of their own: the sentinel logs in to the
# primary with `sentinel auth-pass` and reaches it over TLS (tls-replication yes).
start_secure_sentinel() {
    local primary=$SECURE_PRIMARY_PORT port=$SECURE_SENTINEL_PORT dir=$BASE/redis/$SECURE_SENTINEL_PORT
    if ! secure_up "$primary" "$SECURE_PRIMARY_PASSWORD"; then
        # shellcheck disable=SC2046
        redis_node "$primary" $(tls_args "$primary") \
            --requirepass "$SECURE_PRIMARY_PASSWORD" --masterauth "$SECURE_PRIMARY_PASSWORD"
    fi
    await_secure "$primary" "$SECURE_PRIMARY_PASSWORD"
    if ! secure_up "$port" "$SECURE_SENTINEL_PASSWORD"; then
        mkdir -p "$dir"
        # Sentinels rewrite their config: keep the one it wrote if there is one.
        [ -f "$dir/sentinel.conf" ] || {
            tls_conf "$port"
            cat <<EOF
bind 127.0.0.1
daemonize yes
dir $dir
logfile $dir/log
pidfile $dir/pid
requirepass $SECURE_SENTINEL_PASSWORD
sentinel monitor $SECURE_MASTER_NAME 127.0.0.1 $primary 1
sentinel auth-pass $SECURE_MASTER_NAME $SECURE_PRIMARY_PASSWORD
sentinel down-after-milliseconds $SECURE_MASTER_NAME 2000
sentinel failover-timeout $SECURE_MASTER_NAME 10000
EOF
        } >"$dir/sentinel.conf"
        redis-server "$dir/sentinel.conf" --sentinel
    fi
    await_secure "$port" "$SECURE_SENTINEL_PASSWORD"
    for _ in $(seq 1 200); do
        if secure_cli "$port" "$SECURE_SENTINEL_PASSWORD" sentinel master "$SECURE_MASTER_NAME" 2>/dev/null |
            awk 'prev == "flags" { print } { prev = $1 }' | grep -qx master; then
            say "secured Redis Sentinel: ok (TLS primary $primary, sentinel $port, master $SECURE_MASTER_NAME)"
            return
        fi
        sleep 0.1
    done
    die "the secured sentinel does not see its primary up: see $dir/log and $BASE/redis/$primary/log"
}

# The default user's password on a secured node.
secure_password() {
    case $1 in
    "$SECURE_PRIMARY_PORT") echo "$SECURE_PRIMARY_PASSWORD" ;;
    "$SECURE_SENTINEL_PORT") echo "$SECURE_SENTINEL_PASSWORD" ;;
    *) echo "$SECURE_CLUSTER_PASSWORD" ;;
    esac
}

start_secure() {
    secure_certificates
    start_secure_cluster
    start_secure_sentinel
}

rabbit_env() {
    local n=$1 dir=$BASE/rabbit/c$1
    echo "HOME=$BASE/rabbit/home RABBITMQ_NODENAME=wxpush-c$n@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
    echo "RABBITMQ_NODE_PORT=570$n RABBITMQ_DIST_PORT=2570$n RABBITMQ_CONF_ENV_FILE=$BASE/rabbit/rabbitmq-env.conf"
    echo "RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$BASE/rabbit/enabled_plugins"
    echo "RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log RABBITMQ_PID_FILE=$dir/pid"
}

ctl() {
    local n=$1
    shift
    # shellcheck disable=SC2046
    env $(rabbit_env "$n") "$RABBIT_LIB/rabbitmqctl" -n "wxpush-c$n@localhost" "$@"
}

rabbit_running() { ctl "$1" -q await_startup --timeout 1 >/dev/null 2>&1; }

start_rabbit() {
    [ -x "$RABBIT_LIB/rabbitmq-server" ] || die "RabbitMQ is not installed ($RABBIT_LIB/rabbitmq-server missing)"
    mkdir -p "$BASE/rabbit/home"
    # Our own cookie, so the cluster is apart from the main node.
    if [ ! -f "$BASE/rabbit/home/.erlang.cookie" ]; then
        printf 'WXPUSHCLUSTERTESTCOOKIE' >"$BASE/rabbit/home/.erlang.cookie"
        chmod 400 "$BASE/rabbit/home/.erlang.cookie"
    fi
    echo '[].' >"$BASE/rabbit/enabled_plugins"
    printf 'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\nERL_EPMD_ADDRESS=127.0.0.1\n' \
        >"$BASE/rabbit/rabbitmq-env.conf"
    local started=()
    for n in "${RABBIT_NODES[@]}"; do
        rabbit_running "$n" && continue
        local dir=$BASE/rabbit/c$n
        mkdir -p "$dir/log"
        printf 'listeners.tcp.local = 127.0.0.1:570%s\nloopback_users.guest = true\n' "$n" >"$dir/rabbitmq.conf"
        # A node whose VM is up but whose app was stopped (a failover test) only needs start_app.
        if ctl "$n" -q ping >/dev/null 2>&1; then
            ctl "$n" -q start_app >/dev/null
        else
            # shellcheck disable=SC2046
            env $(rabbit_env "$n") "$RABBIT_LIB/rabbitmq-server" -detached
        fi
        started+=("$n")
    done
    for n in "${started[@]}"; do
        ctl "$n" -q await_startup --timeout 120 >/dev/null ||
            die "RabbitMQ node wxpush-c$n@localhost did not start: see $BASE/rabbit/c$n/log"
    done
    for n in 2 3; do
        ctl 1 -q cluster_status --formatter json 2>/dev/null | grep -q "wxpush-c$n@localhost" && continue
        ctl "$n" -q stop_app >/dev/null
        ctl "$n" -q join_cluster wxpush-c1@localhost >/dev/null ||
            die "wxpush-c$n@localhost could not join wxpush-c1@localhost: see $BASE/rabbit/c$n/log"
        ctl "$n" -q start_app >/dev/null
    done
    say "RabbitMQ cluster: ok (wxpush-c1..c3@localhost on 5701-5703)"
}

print_env() {
    local seeds=() sentinels=() amqp=()
    for port in "${CLUSTER_PORTS[@]}"; do seeds+=("redis://127.0.0.1:$port"); done
    for port in "${SENTINEL_PORTS[@]}"; do sentinels+=("redis://127.0.0.1:$port"); done
    for n in "${RABBIT_NODES[@]}"; do amqp+=("amqp://guest:guest@127.0.0.1:570$n/%2f"); done
    local IFS=,
    echo "export WXPUSH_TEST_REDIS_CLUSTER='${seeds[*]}'"
    echo "export WXPUSH_TEST_REDIS_SENTINEL='${sentinels[*]}'"
    echo "export WXPUSH_TEST_REDIS_SENTINEL_MASTER='$MASTER_NAME'"
    echo "export WXPUSH_TEST_AMQP_CLUSTER='${amqp[*]}'"
    local secure=()
    for port in "${SECURE_CLUSTER_PORTS[@]}"; do
        secure+=("rediss://$SECURE_CLUSTER_USER:$SECURE_CLUSTER_PASSWORD@127.0.0.1:$port")
    done
    echo "export WXPUSH_TEST_REDIS_SECURE_CLUSTER='${secure[*]}'"
    echo "export WXPUSH_TEST_REDIS_SECURE_SENTINEL='rediss://:$SECURE_SENTINEL_PASSWORD@127.0.0.1:$SECURE_SENTINEL_PORT'"
    echo "export WXPUSH_TEST_REDIS_SECURE_SENTINEL_MASTER='$SECURE_MASTER_NAME'"
    echo "export WXPUSH_TEST_REDIS_SECURE_PRIMARY_PASSWORD='$SECURE_PRIMARY_PASSWORD'"
    echo "export WXPUSH_TEST_REDIS_SECURE_CA='$BASE/secure/ca.pem'"
    echo "export WXPUSH_TEST_CLUSTERS_SCRIPT='$SELF'"
}

status() {
    for port in "${CLUSTER_PORTS[@]}" "$PRIMARY_PORT" "$REPLICA_PORT" "${SENTINEL_PORTS[@]}"; do
        if up "$port"; then
            local role
            role=$(redis-cli -p "$port" role 2>/dev/null | head -1)
            say "redis $port: up ($role)"
        else
            say "redis $port: down"
        fi
    done
    for port in "${SECURE_CLUSTER_PORTS[@]}" "$SECURE_PRIMARY_PORT" "$SECURE_SENTINEL_PORT"; do
        local password
        password=$(secure_password "$port")
        if secure_up "$port" "$password"; then
            say "redis $port (TLS): up ($(secure_cli "$port" "$password" role 2>/dev/null | head -1))"
        else
            say "redis $port (TLS): down"
        fi
    done
    for n in "${RABBIT_NODES[@]}"; do
        if rabbit_running "$n"; then say "rabbitmq wxpush-c$n@localhost: up"; else say "rabbitmq wxpush-c$n@localhost: down"; fi
    done
}

stop() {
    for port in "${CLUSTER_PORTS[@]}" "$PRIMARY_PORT" "$REPLICA_PORT" "${SENTINEL_PORTS[@]}"; do
        up "$port" && redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    for port in "${SECURE_CLUSTER_PORTS[@]}" "$SECURE_PRIMARY_PORT" "$SECURE_SENTINEL_PORT"; do
        secure_cli "$port" "$(secure_password "$port")" shutdown nosave >/dev/null 2>&1 || true
    done
    for n in "${RABBIT_NODES[@]}"; do
        ctl "$n" -q stop >/dev/null 2>&1 || true
    done
    say "stopped (data stays in $BASE; remove it for a fresh start)"
}

case "${1:-}" in
start)
    command -v redis-server >/dev/null || die "redis-server is not installed"
    mkdir -p "$BASE"
    # The servers keep the directory they start in: not a checkout that may be deleted
    # (an Erlang node whose cwd is gone cannot even stop its app).
    cd "$BASE"
    began=$(date +%s.%N)
    # RabbitMQ boots slowest: in the background, while Redis starts.
    start_rabbit >"$BASE/rabbit-start.log" 2>&1 &
    rabbit=$!
    start_redis_cluster
    start_sentinel
    start_secure
    wait "$rabbit" || {
        cat "$BASE/rabbit-start.log" >&2
        die "the RabbitMQ cluster did not start"
    }
    cat "$BASE/rabbit-start.log" >&2
    say "clusters ready in $(awk -v a="$began" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
    print_env
    ;;
start-secure)
    command -v redis-server >/dev/null || die "redis-server is not installed"
    mkdir -p "$BASE"
    cd "$BASE"
    start_secure
    print_env
    ;;
env) print_env ;;
status) status ;;
stop) stop ;;
rabbitmqctl)
    shift
    ctl "$@"
    ;;
*)
    sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
